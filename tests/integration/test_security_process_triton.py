"""The process as an attacker (or a long unattended job) sees it: descriptors and threads stay flat
over hundreds of volumes, Ctrl-C and SIGTERM stop a run at once and leave nothing behind, and
secrets (header values, URL credentials, model config contents) never reach stderr or the logs.

Everything runs against the real embedded Triton server (or onnxruntime in process) on real
files; the CLI is run as a real subprocess where signals and resource limits are involved.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT, resolve_app
from clara_napari.core.backends.triton import TransportOptions, TritonModel, parse_address
from clara_napari.core.pipeline import segment_volume
from clara_napari.core.server import EmbeddedServer
from clara_napari.core.volume import write_volume

from helpers.security_process import (  # noqa: E402
    SECRET,
    SLOW_MODEL,
    TINY,
    _logs_text,
    _run_cli,
    cli,
    cli_env,
    open_fds,
    small_volume,
)

ROOT = Path(__file__).resolve().parents[2]


def tiny_app(folder: Path, roi: int = 16) -> Path:
    """An app with a real (tiny, dynamic-size) ONNX segmentation model built here with onnx:
    channel 1 = sigmoid(x), channel 0 = sigmoid(-x) (labels: x > 0); windows of ``roi``³."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["p"]),
         helper.make_node("Neg", ["x"], ["minus_x"]),
         helper.make_node("Sigmoid", ["minus_x"], ["n"]),
         helper.make_node("Concat", ["n", "p"], ["y"], axis=1)],
        TINY, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "a", "b", "c"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "models" / TINY / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "models" / TINY / "1" / "model.onnx"))
    (folder / "models" / TINY / "config.pbtxt").write_text(
        f'name: "{TINY}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, -1, -1, -1 ] } ]\n')
    (folder / "config_inference.json").write_text(json.dumps({
        "pre_transforms": [{"name": "LoadNifti", "args": {"fields": "image"}},
                           {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}}],
        "inferer": {"name": "TRTISScanWindowInferer",
                    "args": {"model_name": TINY, "roi_size": [roi] * 3, "overlap": 0.25, "batch_size": 1,
                             "requests_in_flight": 2}},
        "model_loader": {"name": "TRTISModelLoader",
                         "args": {"model_spec_file_name": "{MODEL_REPOSITORY}/" + TINY + "/config.pbtxt"}},
        "post_transforms": [{"name": "ArgmaxAcrossChannels", "args": {"fields": "model", "dtype": "uint8"}}],
        "writers": [{"name": "WriteNifti", "args": {"field": "model", "dtype": "uint8"}}]}))
    return folder


def thread_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# -- item 6: descriptors and threads stay flat ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve_app(tiny_app(tmp_path_factory.mktemp("tiny_app")))


@pytest.fixture(scope="module")
def tiny_server(tiny):
    with EmbeddedServer(tiny.model_repository) as srv:
        yield srv


@pytest.mark.triton
@pytest.mark.parametrize("protocol,shm", [("http", True), ("http", False), ("grpc", True), ("grpc", False)])
def test_descriptors_and_threads_flat_per_volume(tiny, tiny_server, protocol, shm):
    """60 volumes through one model handle (as the operator runs a folder): the counts after
    volume 10 and after volume 60 are the same, and closing the model gives everything back."""
    config = tiny.config
    address = parse_address(f"{protocol}://127.0.0.1:{tiny_server.ports[protocol]}")
    options = TransportOptions(ready_timeout_s=30, shared_memory=None if shm else False)
    warm_up = TritonModel(address, TINY, in_flight=2, options=options)   # one-time imports and library state
    segment_volume(small_volume(0), config, warm_up)
    warm_up.close()
    baseline_fds, baseline_threads = open_fds(), threading.active_count()
    model = TritonModel(address, TINY, in_flight=2, options=options)
    counts = {}
    try:
        assert model.use_shm is shm
        for i in range(60):
            labels = segment_volume(small_volume(i), config, model).labels
            assert np.array_equal(labels.array, (small_volume(i).array > 0).astype(np.uint8))
            if i + 1 in (10, 60):
                counts[i + 1] = (open_fds(), threading.active_count())
    finally:
        model.close()
    assert counts[60] == counts[10], counts
    # closing gives everything back (gRPC closes its channels' sockets in the background: wait up to 5 s)
    for _ in range(50):
        if open_fds() <= baseline_fds:
            break
        time.sleep(0.1)
    assert open_fds() <= baseline_fds and threading.active_count() == baseline_threads


def _limit_fds(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_300_volumes_under_ulimit_256(tiny, tmp_path, protocol):
    """The CLI on 300 small volumes through the embedded server with ``ulimit -n 256``: the counts
    sampled (process paused) after volume 10 and after volume 299 are equal, the run finishes with
    its summary, exit 0."""
    count = 300
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(count):
        write_volume(small_volume(i, (16, 16, 16)), inputs / f"v{i:03d}.nii.gz")
    command = cli("run", "--app", str(tiny.folder), "--input", str(inputs), "--output", str(tmp_path / "out"),
                  "--no-publish", "--logs", str(tmp_path / "logs"), "--protocol", protocol)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                               preexec_fn=_limit_fds(256))
    samples = {}
    lines = []
    deadline = time.monotonic() + 600
    try:
        for line in process.stdout:
            lines.append(line)
            done = sum(": wrote " in x for x in lines)
            if done in (10, count - 1) and done not in samples:
                process.send_signal(signal.SIGSTOP)
                try:
                    samples[done] = (open_fds(process.pid), thread_count(process.pid))
                finally:
                    process.send_signal(signal.SIGCONT)
            assert time.monotonic() < deadline, "the run took more than 10 minutes"
        rc = process.wait(timeout=120)
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rc == 0, stderr[-2000:]
    assert lines[-1].startswith(f"{count}/{count} volumes segmented"), lines[-3:]
    assert len(list((tmp_path / "out").glob("*.mhd"))) == count
    print(f"{protocol}: fds/threads after volume 10 {samples[10]}, after volume {count - 1} {samples[count - 1]}")
    (fds_10, threads_10), (fds_last, threads_last) = samples[10], samples[count - 1]
    # the pause may catch a volume file open or the engine's 2 per-volume threads alive, nothing more;
    # before the fix this grew by about 8 descriptors per volume (and aborted near volume 30 here)
    assert fds_last <= fds_10 + 2 and threads_last <= threads_10 + 2, samples


@pytest.mark.triton
def test_wrong_model_config_through_the_cli(tmp_path):
    """An app whose model loader names a file holding a secret: the run fails naming the file and
    the line, never its contents (stderr and log file)."""
    app = tiny_app(tmp_path / "app")
    (tmp_path / "secret.pbtxt").write_text(f"{SECRET} {{ }}\n")
    config = json.loads((app / "config_inference.json").read_text())
    config["model_loader"]["args"]["model_spec_file_name"] = str(tmp_path / "secret.pbtxt")
    (app / "config_inference.json").write_text(json.dumps(config))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_volume(0), inputs / "v.nii.gz")
    result = _run_cli(["run", "--app", str(app), "--input", str(inputs), "--output", str(tmp_path / "out"),
                       "--no-publish", "--logs", str(tmp_path / "logs")])
    assert result.returncode == 2 and "secret.pbtxt" in result.stderr and "line 1" in result.stderr
    assert SECRET not in result.stderr + result.stdout + _logs_text(tmp_path / "logs")


# -- item 7: Ctrl-C and SIGTERM stop a run at once and leave nothing behind -----------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _as_background_job() -> None:
    """What a shell does to a job started with ``&``: SIGINT ignored on entry (the reproduced case)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.triton
@pytest.mark.parametrize("server,signum", [("embedded", signal.SIGINT), ("embedded", signal.SIGTERM),
                                           ("local", signal.SIGINT)])
def test_signal_mid_run_stops_at_once_and_cleans_up(tiny, tmp_path, server, signum):
    """The CLI on the real chest CT (thousands of 16³ windows); once inference has started the
    signal stops it: exit 128 + signal, no server process, shared-memory region, server folder,
    output or publish file (partial or whole) left."""
    from clara_napari.core.server import _group_members, _stub_regions

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "chest_ct_lung2.nii.gz").write_bytes((DATA_ROOT / "sample_data/chest_ct/chest_ct_lung2.nii.gz").read_bytes())
    logs, out, publish = tmp_path / "logs", tmp_path / "out", tmp_path / "publish"
    command = cli("run", "--app", str(tiny.folder), "--input", str(inputs), "--output", str(out),
                  "--publish", str(publish), "--logs", str(logs), *(["--server", "local"] if server == "local" else []))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                               preexec_fn=_as_background_job)
    try:
        deadline = time.monotonic() + 180
        while " windows" not in _logs_text(logs):   # the first progress line: inference has started
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "inference did not start within 180 s"
            time.sleep(0.05)
        time.sleep(0.5)
        servers = [p for p in _children(process.pid) if any("tritonserver" in a for a in _cmdline(p)[:1])]
        assert len(servers) == (1 if server == "embedded" else 0)
        workdirs = [Path(a.split("=", 1)[1]).parent for p in servers for a in _cmdline(p)
                    if a.startswith("--model-repository=")]
        regions = [r for p in servers for r in _stub_regions(p)]
        ours = f"clara_napari_{process.pid}_"
        assert server == "local" or (workdirs[0].is_dir() and regions and
                                     any(n.startswith(ours) for n in os.listdir("/dev/shm")))
        start = time.monotonic()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
        latency = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    load = os.getloadavg()[0]
    print(f"{server} {signal.Signals(signum).name}: exit {process.returncode} after {latency:.2f} s (load {load:.1f})")
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in stderr
    assert latency < 5, latency   # the target is 1 s; reported above, not asserted tightly
    assert "volumes segmented" not in stdout
    for pid in servers:
        assert not _group_members(pid), "the embedded server (or a stub of it) is still running"
    assert not [w for w in workdirs if w.exists()], "the server's temporary folder is left"
    assert not [r for r in regions if Path("/dev/shm", r).exists()], "the python backend's shared memory is left"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ours)], "our shared memory is left"
    assert not [p for folder in (out, publish) if folder.exists() for p in folder.rglob("*")], "outputs are left"


@pytest.mark.triton
def test_signal_during_a_long_request(tmp_path):
    """Ctrl-C while every request takes 8 s on the server: the run does not wait for the request
    in flight; exit 130 well before the request would have ended, nothing left behind."""
    from clara_napari.core.server import _group_members, python_paths

    app = tiny_app(tmp_path / "app")
    model = app / "models" / TINY
    (model / "1" / "model.onnx").unlink()
    (model / "1" / "model.py").write_text(SLOW_MODEL.format(paths=python_paths(), delay=8))
    (model / "config.pbtxt").write_text((model / "config.pbtxt").read_text().replace(
        'platform: "onnxruntime_onnx"', 'backend: "python"'))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_volume(0), inputs / "v.nii.gz")
    logs = tmp_path / "logs"
    process = subprocess.Popen(cli("run", "--app", str(app), "--input", str(inputs), "--output", str(tmp_path / "out"),
                                   "--no-publish", "--logs", str(logs)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(cli_env(), CLARA_NAPARI_TRUST_APP_CODE="1"), preexec_fn=_as_background_job)
    try:
        deadline = time.monotonic() + 180
        while " windows" not in _logs_text(logs):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "inference did not start within 180 s"
            time.sleep(0.05)
        time.sleep(1.0)   # the first requests are on the server, sleeping
        servers = [p for p in _children(process.pid) if any("tritonserver" in a for a in _cmdline(p)[:1])]
        start = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        latency = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    print(f"SIGINT during an 8 s request: exit {process.returncode} after {latency:.2f} s "
          f"(load {os.getloadavg()[0]:.1f})")
    assert process.returncode == 130, stderr[-2000:]
    assert latency < 5, latency
    assert servers and not any(_group_members(pid) for pid in servers)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"clara_napari_{process.pid}_")]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
