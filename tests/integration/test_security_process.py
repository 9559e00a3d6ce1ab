"""The process as an attacker (or a long unattended job) sees it: descriptors and threads stay flat
over hundreds of volumes, Ctrl-C and SIGTERM stop a run at once and leave nothing behind, and
secrets (header values, URL credentials, model config contents) never reach stderr or the logs.

Everything runs against the real embedded Triton server (or onnxruntime in process) on real
files; the CLI is run as a real subprocess where signals and resource limits are involved.
"""
from __future__ import annotations

import http.server
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT, resolve_app
from clara_napari.core.pipeline import segment_volume
from clara_napari.core.triton.address import TransportOptions, parse_address
from clara_napari.core.triton.embedded import EmbeddedServer
from clara_napari.core.triton.model import TritonModel
from clara_napari.core.volume import write_volume

from helpers.slow_model import slow_model_program
from helpers.tiny_app import TINY, small_volume, tiny_app

ROOT = Path(__file__).resolve().parents[2]
def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clara_napari", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("NVIDIA_CLARA_TRTISURI", None)
    env.pop("CLARA_NAPARI_HEADERS", None)
    # the tiny app runs thousands of 16³ windows on the chest CT on purpose (a long run to interrupt)
    env["CLARA_NAPARI_MAX_WINDOWS"] = "20000"
    return env


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


# -- item 12: secrets are masked everywhere ------------------------------------------------------
SECRET = "S3cretT0ken-for-the-test"


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 401 to everything and records the Authorization headers it was sent."""

    seen: list = []

    def _refuse(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"error": "unauthorized"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse  # noqa: N815 - http.server naming

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_server():
    _RefusingHandler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], _RefusingHandler.seen
    httpd.shutdown()
    httpd.server_close()


def _run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout)


def _logs_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("*.log")) if folder.is_dir() else ""


def test_mask_hides_url_credentials_and_remembered_values():
    from clara_napari.core.masking import forget_all, mask, remember

    assert mask("Triton at http://bob:pw-123456@h:8000 failed") == "Triton at http://***@h:8000 failed"
    assert mask("grpcs://tok@h:1 and bob:pw-123456@h:8000") == "grpcs://***@h:1 and ***@h:8000"
    assert mask("a@b is not a credential") == "a@b is not a credential"   # no ':' before the '@'
    remember(SECRET)
    try:
        assert mask(f"header x={SECRET}; again {SECRET}") == "header x=***; again ***"
    finally:
        forget_all()
    assert SECRET in mask(SECRET)


def test_masking_filter_covers_message_args_and_traceback(tmp_path):
    import logging

    from clara_napari.core.masking import MaskingFilter, forget_all, remember

    remember(SECRET)
    logger = logging.getLogger("clara_napari.test_masking")
    handler = logging.FileHandler(tmp_path / "x.log")
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("token %s at %s", SECRET, "http://bob:pw-123456@h:1")
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            logger.exception("internal error")
    finally:
        logger.removeHandler(handler)
        handler.close()
        forget_all()
    text = (tmp_path / "x.log").read_text()
    assert SECRET not in text and "pw-123456" not in text
    assert "token *** at http://***@h:1" in text and "RuntimeError: failed with ***" in text


@pytest.mark.parametrize("item", [f"Authorization: Bearer {SECRET}", SECRET, f"={SECRET}"])
def test_malformed_header_is_not_echoed(tmp_path, item):
    result = _run_cli(["run", "--app", "lung_ct", "--server", "local", "--input", str(tmp_path / "in"),
                       "--output", str(tmp_path / "out"), "--no-publish", "--logs", str(tmp_path / "logs"),
                       "--header", item])
    assert result.returncode == 2
    assert "--header" in result.stderr and "is not KEY=VALUE" in result.stderr
    assert SECRET not in result.stderr + result.stdout + _logs_text(tmp_path / "logs")


def test_malformed_header_from_environment_is_not_echoed(tmp_path):
    env = dict(cli_env(), CLARA_NAPARI_HEADERS=f"ok=1;{SECRET}")
    result = subprocess.run(cli("models", "--server", "127.0.0.1:9"), capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2 and "CLARA_NAPARI_HEADERS" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["models", "run"])
def test_url_credentials_never_printed_and_sent_as_basic_auth(tmp_path, refusing_server, command):
    """``http://user:pass@host``: the server gets basic auth, stderr and the log file only ``***@``."""
    import base64

    port, seen = refusing_server
    url = f"http://bob:{SECRET}@127.0.0.1:{port}"
    args = ["--server", url, "--ready-timeout", "2", "--header", f"clara-key={SECRET}x"]
    if command == "run":
        inputs = tmp_path / "in"
        inputs.mkdir()
        write_volume(small_volume(0), inputs / "v.nii.gz")
        args = ["--debug", "run", "--app", "lung_ct", "--input", str(inputs), "--output", str(tmp_path / "out"),
                "--no-publish", "--logs", str(tmp_path / "logs"), *args]
    else:
        args = ["--debug", "models", *args]
    result = _run_cli(args)
    assert result.returncode != 0
    everything = result.stderr + result.stdout + _logs_text(tmp_path / "logs")
    assert f"http://127.0.0.1:{port}" in result.stderr and "refused" in result.stderr
    assert SECRET not in everything
    assert base64.b64encode(f"bob:{SECRET}".encode()).decode() not in everything
    assert f"Basic {base64.b64encode(f'bob:{SECRET}'.encode()).decode()}" in seen


def test_wrong_model_config_contents_not_quoted(tmp_path):
    from clara_napari.core.errors import ConfigError
    from clara_napari.core.model_repository import read_model_config

    secret_file = tmp_path / "credentials.pbtxt"
    secret_file.write_text(f"{SECRET}: 1\npassword: \"{SECRET}\"\n")
    with pytest.raises(ConfigError) as info:
        read_model_config(secret_file)
    assert SECRET not in str(info.value) and "line 1, column 1" in str(info.value)
    (tmp_path / "syntax.pbtxt").write_text(f'name: "x"\ninput [ {SECRET}')
    with pytest.raises(ConfigError) as info:
        read_model_config(tmp_path / "syntax.pbtxt")
    assert SECRET not in str(info.value) and "line 2" in str(info.value)


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
    from clara_napari.core.triton.processes import group_members as _group_members
    from clara_napari.core.triton.processes import stub_regions as _stub_regions

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


def test_app_logging_config_handlers_are_masked(tmp_path, refusing_server):
    """A handler that an app's logging config gives a named logger is masked too."""
    port, _ = refusing_server
    app_dir = tmp_path / "app"
    assert _run_cli(["new-app", str(app_dir), "--from", "lung_ct"]).returncode == 0
    (app_dir / "logging_config.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        # a relative file name: inside the run's --logs folder (an app may not write elsewhere)
        "handlers": {"f": {"class": "logging.FileHandler", "filename": "app.log", "level": "DEBUG"}},
        "loggers": {"clara_napari": {"handlers": ["f"], "level": "DEBUG"}}}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_volume(0), inputs / "v.nii.gz")
    result = _run_cli(["run", "--app", str(app_dir), "--input", str(inputs), "--output", str(tmp_path / "out"),
                       "--no-publish", "--logs", str(tmp_path / "logs"), "--ready-timeout", "2",
                       "--server", f"http://bob:{SECRET}@127.0.0.1:{port}", "--header", f"clara-key={SECRET}2"])
    assert result.returncode != 0
    app_log = (tmp_path / "logs" / "app.log").read_text()
    assert "app lung_ct" in app_log or "app app" in app_log   # the handler did receive the run's records
    assert SECRET not in app_log + result.stderr + _logs_text(tmp_path / "logs")


def test_widget_settings_never_store_url_credentials(tmp_path, monkeypatch):
    from clara_napari.napari._settings import load_settings, save_settings

    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(tmp_path))
    save_settings({"server": f"https://bob:{SECRET}@triton.example:8443", "protocol": "HTTP"})
    assert SECRET not in (tmp_path / "napari_widget.json").read_text()
    assert load_settings()["server"] == "https://triton.example:8443"


def test_client_threads_end_with_their_resources():
    """Each worker runs ``on_exit`` on its own thread when closed; calls after close are refused;
    a gevent hub made on a worker is destroyed with it (its descriptors are given back)."""
    from clara_napari.core.triton.threads import ClientThreads, destroy_gevent_hub

    pytest.importorskip("gevent")
    import gevent

    exited = []

    def on_exit() -> None:
        exited.append(threading.current_thread().name)
        destroy_gevent_hub()

    before = open_fds()
    workers = ClientThreads(3, name="test-workers", on_exit=on_exit)
    names = {workers.call(lambda: (gevent.get_hub(), gevent.sleep(0.05), threading.current_thread().name)[2])
             for _ in range(12)}
    assert names <= {f"test-workers-{i}" for i in range(3)}
    assert open_fds() > before   # the hubs hold descriptors while their threads live
    assert workers.close(timeout_s=10)
    assert sorted(exited) == [f"test-workers-{i}" for i in range(3)]
    assert open_fds() <= before
    with pytest.raises(RuntimeError):
        workers.call(lambda: None)


@pytest.mark.triton
def test_signal_during_a_long_request(tmp_path):
    """Ctrl-C while every request takes 8 s on the server: the run does not wait for the request
    in flight; exit 130 well before the request would have ended, nothing left behind."""
    from clara_napari.core.triton.processes import group_members as _group_members

    app = tiny_app(tmp_path / "app")
    model = app / "models" / TINY
    (model / "1" / "model.onnx").unlink()
    (model / "1" / "model.py").write_text(slow_model_program(8, "np.concatenate([-x, x], axis=1)"))
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
