"""The panel's Qt-free logic (clara_napari/napari/_panel.py): server choice as the CLI makes it, a refused
connection reported at once, result naming, undoable replacement, measurements; and the API's probabilities.

The API's probabilities on a whole volume (slow) are in tests/integration/test_napari_panel_volume.py.
"""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from clara_napari.core.errors import ClaraNapariError, ServerError
from clara_napari.core.session import choose_server
from clara_napari.napari._panel import (
    AUTO,
    EMBEDDED,
    LOCAL,
    check_reachable,
    measure,
    replacement,
    result_name,
    table_columns,
    to_csv,
)

from helpers import brain_app, dice


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("NVIDIA_CLARA_TRTISURI", raising=False)


def test_server_field_local_and_embedded(no_env, tmp_path):
    assert choose_server("local").kind == LOCAL and choose_server(" LOCAL ").kind == LOCAL
    assert choose_server(EMBEDDED).kind == EMBEDDED
    app = brain_app(tmp_path / "plain")
    for text in ("", AUTO, "Auto"):      # nothing named anywhere: embedded, as the CLI
        assert choose_server(text, protocol="HTTP", inferer=app.config.inferer).kind == EMBEDDED


def test_auto_follows_the_cli_policy(monkeypatch, no_env, tmp_path):
    addressed = brain_app(tmp_path / "addressed", ip="10.1.2.3", port=8123)
    choice = choose_server(AUTO, protocol="HTTP", inferer=addressed.config.inferer)
    assert (choice.kind, str(choice.address), choice.reason) == ("remote", "http://10.1.2.3:8123", "the app's ip/port")
    monkeypatch.setenv("NVIDIA_CLARA_TRTISURI", "trtis.example:9000")   # the environment wins over the app
    choice = choose_server(AUTO, protocol="gRPC", inferer=addressed.config.inferer)
    assert (str(choice.address), choice.reason) == ("grpc://trtis.example:9000", "$NVIDIA_CLARA_TRTISURI")
    typed = choose_server("grpc://other:8001", protocol="HTTP", inferer=addressed.config.inferer)   # typed wins
    assert (str(typed.address), typed.reason) == ("grpc://other:8001", "named")
    assert choose_server(EMBEDDED, protocol="HTTP", inferer=addressed.config.inferer).kind == EMBEDDED
    with pytest.raises(ServerError, match="port"):
        choose_server("host:notaport", protocol="HTTP")


def test_a_refused_connection_is_reported_at_once():
    address = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(ServerError) as caught:
        check_reachable(address)
    seconds = time.perf_counter() - started
    print(f"\nrefused connection reported in {seconds * 1000:.1f} ms")
    assert seconds < 1.0
    message = str(caught.value)
    assert "connection refused" in message and address in message and "\n" not in message
    with socket.socket() as listening:            # something listening: no error
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")


def test_run_job_reports_a_dead_server_within_a_second(tmp_path, no_env):
    from clara_napari.core.volume import Volume
    from clara_napari.napari._panel_model import configured
    from clara_napari.napari._runner import Job, run_job

    app = brain_app(tmp_path / "app")
    job = Job(volume=Volume(np.zeros((8, 8, 8), np.float32)), app=app, config=configured(app.config),
              server=f"127.0.0.1:{free_port()}", ready_timeout_s=15.0)
    started = time.perf_counter()
    outcome = run_job(job)
    seconds = time.perf_counter() - started
    print(f"\ndead server: run_job failed in {seconds * 1000:.1f} ms")
    assert isinstance(outcome.error, ServerError) and "connection refused" in str(outcome.error)
    assert seconds < 1.0


def test_result_names_carry_app_and_time():
    when = time.mktime((2026, 12, 3, 9, 8, 7, 0, 0, -1))
    assert result_name("t1", "brain_extraction_t1", when) == "t1 brain_extraction_t1 09:08:07"


def test_replacement_changes_only_what_differs():
    rng = np.random.default_rng(1)
    old = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    new = old.copy()
    new[1:3, 2:4, :] = 2
    indices, values = replacement(old, new)
    assert indices[0].size == int(np.count_nonzero(old != new))
    patched = old.copy()
    patched[indices] = values
    assert np.array_equal(patched, new)
    with pytest.raises(ClaraNapariError):
        replacement(old, new[:4])


def test_measurements_are_voxels_times_voxel_volume_and_dice():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (10, 11, 12)).astype(np.uint8)
    reference = labels.copy()
    reference[:3] = 0
    spacing = (0.75, 0.8, 2.5)
    rows = measure(labels, spacing, {1: "brain", 2: "tumour", 4: "never found"}, reference)
    assert [(r.value, r.name) for r in rows] == [(1, "brain"), (2, "tumour"), (4, "never found")]
    for row in rows:
        voxels = int(np.count_nonzero(labels == row.value))
        assert row.voxels == voxels
        assert row.ml == pytest.approx(voxels * 0.75 * 0.8 * 2.5 / 1000.0, rel=1e-12)
        assert row.dice == pytest.approx(dice(labels == row.value, reference == row.value), rel=1e-12)
    assert rows[2].voxels == 0 and rows[2].dice == 1.0        # absent from both: perfect agreement
    assert measure(labels, spacing)[0].dice is None            # no reference: no Dice
    with pytest.raises(ClaraNapariError, match="reference"):
        measure(labels, spacing, reference=reference[:5])


def test_table_text_forms():
    rows = measure(np.array([[[0, 1, 1, 2]]], np.uint8), (1.0, 2.0, 5.0), {1: "a, b"})
    csv_text = to_csv(rows)
    assert csv_text.splitlines() == ["label,name,voxels,ml,dice", '1,"a, b",2,0.020,', "2,label 2,1,0.010,"]
    assert to_csv(rows, delimiter="\t").splitlines()[1] == "1\ta, b\t2\t0.020\t"
    assert table_columns(rows)["voxels"] == ["2", "1"]
