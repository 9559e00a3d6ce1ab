"""Server faults against the real embedded Triton: killed, restarted, model unloaded mid-run."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.errors import ServerError
from clara_napari.core.triton.embedded import EmbeddedServer
from clara_napari.core.triton.locations import free_port
from clara_napari.core.triton.processes import group_members as _group_members

from helpers import brain_app, t1_crop

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
MODELS = DATA_ROOT / "sample_data" / "models"


def shm_names(prefix: str) -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)}


@pytest.fixture(scope="module")
def volume():
    """A real T1 crop: 120 x 120 x 100 voxels."""
    return t1_crop(slice(40, 140), slice(50, 170), slice(30, 150))


@pytest.fixture(scope="module")
def small_window_app(tmp_path_factory):
    """The brain app with 64^3 windows, so a run has many requests (27 windows here)."""
    return brain_app(tmp_path_factory.mktemp("app64"), roi_size=[64, 64, 64], overlap=0.25, requests_in_flight=2)


@pytest.fixture(scope="module")
def reference(volume, small_window_app):
    return cn.run_app(volume, small_window_app, server="local").labels.array


@pytest.fixture(autouse=True)
def no_leaks(monkeypatch):
    """Neither our client regions nor the python backend's regions of the servers started here survive."""
    started = []
    original = EmbeddedServer.start

    def start(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(EmbeddedServer, "start", start)
    ours = f"clara_napari_{os.getpid()}_"
    before = shm_names(ours)
    yield
    for server in started:
        server.stop()
    assert shm_names(ours) <= before, "our shared-memory regions leaked"
    regions = {r for server in started for r in server.shm_regions}
    assert regions or not started
    assert not [r for r in regions if Path("/dev/shm", r).exists()], "the python backend's regions leaked"


def test_server_killed_mid_run(tmp_path, volume, small_window_app, reference, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cn.write_volume(volume, inputs / "t1.nii.gz")
    server = EmbeddedServer(MODELS).start()
    killed_at = []

    def kill_after_three(done, total):
        if done >= 3 and not killed_at:
            killed_at.append(time.monotonic())
            os.kill(server.process.pid, signal.SIGKILL)   # the server dies, as under the OOM killer

    from clara_napari.core.operator import RunOptions, run

    options = RunOptions(app=small_window_app, input=inputs, output=tmp_path / "out", publish=tmp_path / "pub",
                         server=server.http_url, server_options={"timeout_s": 5, "retries": 1})
    try:
        results = run(options, progress_for=lambda source: kill_after_three)
        detected = time.monotonic() - killed_at[0]
    finally:
        server.stop()
    assert len(results) == 1 and not results[0].ok
    assert server.http_url.split("//")[1] in results[0].message and "\n" not in results[0].message
    assert detected < 10, f"took {detected:.1f} s to notice the dead server"
    print(f"killed server detected after {detected:.2f} s")
    for folder in (tmp_path / "out", tmp_path / "pub"):
        assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]
    # the next run after a restart succeeds
    with EmbeddedServer(MODELS) as again:
        assert main(["run", "--app", str(small_window_app.folder), "--server", again.http_url, "--input",
                     str(inputs), "--output", str(tmp_path / "out"), "--no-publish", "--logs", str(tmp_path / "logs")]) == 0
    assert np.array_equal(cn.read_volume(tmp_path / "out" / "t1.mhd").array, reference)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_restarted_between_windows(volume, small_window_app, reference, protocol):
    ports = {"http_port": free_port(), "grpc_port": free_port()}
    holder = {"server": EmbeddedServer(MODELS, **ports).start()}
    restarted = threading.Event()

    def restart():
        holder["server"].stop()
        holder["server"] = EmbeddedServer(MODELS, **ports).start()
        restarted.set()

    started = []

    def progress(done, total):
        if done >= 4 and not started:
            started.append(threading.Thread(target=restart))
            started[0].start()

    url = f"{protocol}://127.0.0.1:{ports[protocol + '_port']}"
    try:
        result = cn.run_app(volume, small_window_app, server=url, progress=progress, retries=6, timeout_s=30)
        started[0].join(60)
        assert restarted.is_set()
    finally:
        holder["server"].stop()
    assert np.array_equal(result.labels.array, reference)


def test_model_unloaded_mid_run(volume, small_window_app):
    import tritonclient.http as thttp

    with EmbeddedServer(MODELS) as server:
        client = thttp.InferenceServerClient(server.http_url.split("//")[1])

        def progress(done, total):
            if done == 2:
                client.unload_model("deepbet_brain_t1", headers=server.auth_headers("http"))   # the key: ours

        start = time.monotonic()
        with pytest.raises(ServerError) as info:
            cn.run_app(volume, small_window_app, server=server.http_url, progress=progress, timeout_s=10, retries=1)
        client.close()
    message = str(info.value)
    assert "deepbet_brain_t1" in message and server.http_url.split("//")[1] in message
    assert time.monotonic() - start < 30


def test_embedded_server_gone_after_exception(volume, small_window_app):
    """An exception in the middle of a run with the embedded server stops the server too."""
    seen = {}

    original = EmbeddedServer.start

    def boom(done, total):
        raise RuntimeError("user code failed")

    def start(self):
        result = original(self)
        seen.setdefault("pids", []).append(self.process.pid)
        return result

    EmbeddedServer.start = start

    try:
        with pytest.raises(RuntimeError, match="user code failed"):
            cn.run_app(volume, small_window_app, progress=boom)
    finally:
        EmbeddedServer.start = original
    assert len(seen["pids"]) == 1
    time.sleep(0.3)
    for pid in seen["pids"]:
        assert not _group_members(pid)
