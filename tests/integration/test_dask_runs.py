"""Many studies on a Dask LocalCluster (core/dask_runs.py): real worker processes, a real Triton server."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from clara_napari.core.apps import resolve_app  # noqa: E402
from clara_napari.core.dask_runs import local_cluster, run_on_dask, study_key  # noqa: E402
from clara_napari.core.errors import ConfigError  # noqa: E402
from clara_napari.core.operator import RunOptions, run  # noqa: E402
from clara_napari.core.triton.embedded import SERVE_RESTRICTED, EmbeddedServer  # noqa: E402

from helpers.scale_models import write_latency_app, write_volumes

pytestmark = [pytest.mark.triton, pytest.mark.timeout(600)]
STUDIES = 6


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """An app (40 ms per window, two model instances, one request in flight per volume) and six
    volumes of 3 x 3 x 4 windows each."""
    folder = tmp_path_factory.mktemp("dask_runs")
    app = resolve_app(write_latency_app(folder / "app", delay_s=0.04, instances=2, in_flight=1))
    write_volumes(folder / "input", STUDIES, shape=(32, 40, 48))
    return app, folder / "input"


@pytest.fixture(scope="module")
def server(studies):
    # a server of its own for the workers, as `clara-napari serve` runs one: inference open, control keyed
    with EmbeddedServer(studies[0].model_repository, threads=1, restricted=SERVE_RESTRICTED) as srv:
        yield srv


@pytest.fixture(scope="module")
def serial_outputs(studies, server, tmp_path_factory):
    app, inputs = studies
    out = tmp_path_factory.mktemp("serial")
    results = run(RunOptions(app=app, input=inputs, output=out, server=server.http_url))
    assert [r.ok for r in results] == [True] * STUDIES, [r.message for r in results]
    return _files(out)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_local_cluster_matches_serial_run(studies, serial_outputs, tmp_path, monkeypatch):
    """Two worker processes, the embedded server started once by this process for both: the
    same files, byte for byte, as the serial run; each worker opened the model once."""
    app, inputs = studies
    with pytest.raises(ConfigError, match="python-backend model"):   # the app's own model is code: not by default
        run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path / "refused"), workers=1, timeout_s=300)
    assert not (tmp_path / "refused").exists()
    monkeypatch.setenv("CLARA_NAPARI_TRUST_APP_CODE", "1")
    reported, progress = [], []
    results = run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path), workers=2, report=reported.append,
                          progress=lambda path, done, total: progress.append((path.name, done, total)),
                          timeout_s=300)
    assert [r.ok for r in results] == [True] * STUDIES, [r.message for r in results]
    assert [r.input.name for r in results] == sorted(p.name for p in inputs.iterdir())
    assert len(reported) == STUDIES
    # per-study window progress came back from the workers: each study's last quarter, 36 windows
    def finished() -> set[str]:
        return {name for name, done, total in progress if done == total == 36}

    deadline = time.monotonic() + 10     # the handler runs on the client's event-loop thread
    while len(finished()) < STUDIES and time.monotonic() < deadline:
        time.sleep(0.1)
    assert finished() == {r.input.name for r in results}
    assert {r.attempts for r in results} == {1}
    assert len({r.worker for r in results}) == 2            # both workers took volumes
    assert {r.sessions_opened for r in results} == {1}      # ... and each opened the model once
    assert _files(tmp_path) == serial_outputs
    assert len(serial_outputs) == 2 * STUDIES               # .mhd + .raw per volume


def test_killed_worker_loses_only_its_volume(studies, server, serial_outputs, tmp_path):
    """SIGKILL the worker process running the third volume mid-volume: that volume runs once
    more on a worker, the others are untouched, and every output equals the serial run's."""
    from distributed import Client

    app, inputs = studies
    victim_key = study_key(2, sorted(inputs.iterdir())[2], 1)
    results: list = []
    errors: list = []
    with local_cluster(2) as cluster, Client(cluster.scheduler_address, set_as_default=False) as client:
        def work():
            try:
                results.extend(run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path,
                                                      server=server.http_url),
                                           scheduler=cluster.scheduler_address, timeout_s=300))
            except BaseException as exc:  # noqa: BLE001  (handed to the test thread, which raises it)
                errors.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            for address, keys in client.processing().items():
                if victim_key in keys:
                    time.sleep(0.4)     # well inside the volume (about 1.5 s of windows)
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.05)
        thread.join(timeout=300)
    assert not thread.is_alive()
    assert not errors, errors
    assert killed is not None, "the victim volume was never seen running"
    assert [r.ok for r in results] == [True] * STUDIES, [r.message for r in results]
    assert [r.attempts for r in results] == [1, 1, 2, 1, 1, 1]
    assert "its first worker died" in results[2].message
    assert _files(tmp_path) == serial_outputs


def test_workers_or_scheduler(studies, tmp_path):
    app, inputs = studies
    with pytest.raises(ConfigError, match="either --workers"):
        run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path), workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="at least one worker"):
        run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path), workers=0)


def test_cli_workers(studies, server, serial_outputs, tmp_path, capsys, restore_root_logging):
    from clara_napari.cli import main

    app, inputs = studies
    code = main(["run", "--app", str(app.folder), "--input", str(inputs), "--output", str(tmp_path / "out"),
                 "--no-publish", "--logs", str(tmp_path / "logs"), "--workers", "1", "--server", server.http_url])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{STUDIES}/{STUDIES} volumes segmented with app" in captured.out
    assert sum(line.startswith("study_") for line in captured.out.splitlines()) == STUDIES
    assert _files(tmp_path / "out") == serial_outputs


def test_existing_cluster_shares_one_embedded_server_per_machine(studies, serial_outputs, tmp_path, monkeypatch):
    """--scheduler and no server: the first worker of the machine starts the embedded server
    under a file lock, the other worker of the machine uses it (the app's python model trusted:
    the workers inherit the variable)."""
    import json

    from distributed import Client

    from clara_napari.core.machine_server import machine_server_state

    app, inputs = studies
    monkeypatch.setenv("CLARA_NAPARI_TRUST_APP_CODE", "1")
    with local_cluster(2) as cluster, Client(cluster.scheduler_address, set_as_default=False) as client:
        results = run_on_dask(RunOptions(app=app, input=inputs, output=tmp_path / "out"),
                              scheduler=cluster.scheduler_address, timeout_s=300)
        worker_pids = set(client.run(os.getpid).values())
        state = json.loads(machine_server_state(app.model_repository).read_text())
    assert [r.ok for r in results] == [True] * STUDIES, [r.message for r in results]
    assert len({r.worker for r in results}) == 2
    assert state["pid"] in worker_pids        # started by one of the workers, used by both
    assert _files(tmp_path / "out") == serial_outputs


def test_machine_server_state_is_private(studies, tmp_path, monkeypatch):
    """The folder holding the machine server's address must be this user's alone."""
    import tempfile

    from clara_napari.core.errors import ServerError
    from clara_napari.core.machine_server import machine_server_state

    app, _ = studies
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    state = machine_server_state(app.model_repository)
    assert state.parent.stat().st_mode & 0o777 == 0o700
    state.parent.chmod(0o777)      # as if another user had made it, world-writable
    with pytest.raises(ServerError, match="not a private folder"):
        machine_server_state(app.model_repository)
