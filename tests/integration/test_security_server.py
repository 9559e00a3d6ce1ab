"""Issue 10, the embedded Triton server and ``serve``: locked-down model control, restricted APIs
with a per-start key, owner-only temp folders and shared memory, plain model names, stale temp
folders of killed runs (docs/security.md, section "Embedded Triton server and ``serve``").

Everything runs against the real ``tritonserver`` of the nvidia-pytriton wheel, real files and
real processes; an "attacker" is a plain client (urllib, tritonclient, curl-like requests) that
does not know the key.

The rules checked without a server are in tests/unit/test_security_server_rules.py.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.triton.embedded import GRPC_KEY_HEADER, KEY_HEADER, TEMP_PREFIX, EmbeddedServer
from clara_napari.core.triton.locations import python_paths
from clara_napari.core.triton.workdirs import remove_stale_workdirs

from helpers.security_server import (
    EVIL_MODEL,
    LUNG,
    MODELS,
)

ROOT = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (to prove nothing was added or changed)."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def _request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _attack_body(marker: Path, name: str = "evil") -> bytes:
    """Triton's load request with a model config and a ``file:`` override carrying code."""
    config = {"name": name, "backend": "python", "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]}
    code = EVIL_MODEL.format(marker=str(marker), paths=python_paths())
    return json.dumps({"parameters": {"config": json.dumps(config),
                                      "file:1/model.py": base64.b64encode(code.encode()).decode()}}).encode()


@pytest.mark.triton
def test_sigkilled_run_leaves_a_folder_the_next_start_removes(tmp_path):
    """A real process starts the embedded server and is SIGKILLed: its temp folder stays behind
    until the next start, which removes it (and never the folder of a live server)."""
    script = ("import sys, time\n"
              "from clara_napari.core.triton.embedded import EmbeddedServer\n"
              f"s = EmbeddedServer({str(MODELS)!r}, models=[{LUNG!r}]).start()\n"
              "print(s.workdir, s.process.pid, *s.shm_regions, flush=True)\n"
              "time.sleep(300)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        workdir, server_pid, *regions = child.stdout.readline().split()
        workdir = Path(workdir)
        assert workdir.name.startswith(TEMP_PREFIX) and workdir.is_dir()
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert (workdir / "owner.pid").read_text().split()[0] == str(child.pid)
        remove_stale_workdirs()
        assert workdir.is_dir()       # its owner is alive: kept
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert workdir.is_dir()   # SIGKILL: nothing cleaned up ...
    deadline = time.monotonic() + 30   # ... but the server dies with its parent, its stubs unlink their regions
    while time.monotonic() < deadline and (Path(f"/proc/{server_pid}").exists() or
                                           any(Path("/dev/shm", r).exists() for r in regions)):
        time.sleep(0.2)
    assert not Path(f"/proc/{server_pid}").exists() and regions
    assert not [r for r in regions if Path("/dev/shm", r).exists()]
    with EmbeddedServer(MODELS, models=[LUNG]) as server:   # the next start
        assert not workdir.exists()
        assert server.workdir.is_dir()


@pytest.fixture(scope="module")
def locked(repo):
    before = _tree(repo)
    with EmbeddedServer(repo, models=[LUNG, "double"]) as server:
        yield server
    assert _tree(repo) == before, "the server changed the model repository"


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "attack-ran"


def _settle(marker: Path, seconds: float = 3.0) -> None:
    """Give a (wrongly) loading model time to run its code; bounded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.2)


@pytest.mark.triton
def test_command_line_is_locked_down(locked):
    args = locked.process.args
    assert "--model-control-mode=explicit" in args and "--allow-metrics=false" in args
    assert "--allow-sagemaker=false" in args and "--allow-vertex-ai=false" in args
    assert sorted(a for a in args if a.startswith("--load-model")) == ["--load-model=double", f"--load-model={LUNG}"]
    assert not any("*" in a for a in args if a.startswith("--load-model"))
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        restricted = next(a for a in args if a.startswith(flag))
        assert "model-repository" in restricted and "shared-memory" in restricted and "logging" in restricted
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", locked.ports["metrics"]), timeout=2).close()
    # the key is an argument of tritonserver, and /proc/<pid>/cmdline is readable by every user
    assert not _processes_showing(locked.key)


def _processes_showing(secret: str) -> list[int]:
    """PIDs whose command line (world-readable) holds ``secret``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if secret.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.triton
def test_http_attack_is_refused_and_runs_nothing(locked, tmp_path, repo):
    marker = _marker(tmp_path)
    base = locked.http_url
    attacks = [
        ("/v2/repository/models/evil/load", _attack_body(marker), {"Content-Type": "application/json"}),
        ("/v2/repository/models/evil/load", _attack_body(marker),     # a web page: text/plain, foreign Origin
         {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
        ("/v2/repository/models/unwanted/load", b"{}", {}),
        (f"/v2/repository/models/{LUNG}/unload", b"{}", {}),
        (f"/v2/repository/models/{LUNG}/unload", b"{}",
         {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
        ("/v2/repository/index", b"{}", {}),
        ("/v2/systemsharedmemory/region/x/register",
         json.dumps({"key": "/x", "offset": 0, "byte_size": 8}).encode(), {}),
        ("/v2/logging", json.dumps({"log_file": str(tmp_path / "log")}).encode(), {}),
        ("/v2/trace/setting", json.dumps({"trace_file": str(tmp_path / "trace")}).encode(), {}),
        (f"/v2/models/{LUNG}/infer", b"{}", {}),
        (f"/v2/repository/models/{LUNG}/load", b"{}", {KEY_HEADER: "a-guess"}),
    ]
    for path, body, headers in attacks:
        status, text = _request(base + path, body, headers)
        assert status == 403 and "restricted" in text, (path, status, text)
    _settle(marker)
    assert not marker.exists() and not (repo.parent / (repo.name + "-unwanted-ran")).exists()
    assert not (tmp_path / "log").exists() and not (tmp_path / "trace").exists()
    # the models are still there, and the key opens the index (only the wanted models)
    status, text = _request(base + "/v2/repository/index", b"{}", locked.auth_headers("http"))
    assert status == 200
    assert {(m["name"], m.get("state")) for m in json.loads(text)} == {(LUNG, "READY"), ("double", "READY")}
    assert _request(base + "/v2/health/ready")[0] == 200


@pytest.mark.triton
def test_grpc_attack_is_refused(locked, tmp_path):
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    marker = _marker(tmp_path)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{locked.ports['grpc']}")
    try:
        code = EVIL_MODEL.format(marker=str(marker), paths=python_paths()).encode()
        config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0})
        calls = [lambda: client.get_model_repository_index(),
                 lambda: client.load_model("evil", config=config, files={"file:1/model.py": code}),
                 lambda: client.load_model("unwanted"),
                 lambda: client.unload_model(LUNG),
                 lambda: client.register_system_shared_memory("x", "/x", 8),
                 lambda: client.update_log_settings({"log_file": str(tmp_path / "log")}),
                 lambda: client.get_model_repository_index(headers={GRPC_KEY_HEADER: "a-guess"})]
        for call in calls:
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        _settle(marker)
        assert not marker.exists() and not (tmp_path / "log").exists()
        index = client.get_model_repository_index(headers=locked.auth_headers("grpc"))
        assert {m.name for m in index.models} == {LUNG, "double"}
        assert client.is_model_ready(LUNG, headers=locked.auth_headers("grpc"))
    finally:
        client.close()


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_still_works_for_this_process(locked, protocol):
    """The project's own client (same process) gets the key; results match onnxruntime in process."""
    from clara_napari.core.backends.local import LocalBackend
    from clara_napari.core.triton.address import TransportOptions, parse_address
    from clara_napari.core.triton.model import TritonModel

    address = parse_address(f"{protocol}://127.0.0.1:{locked.ports[protocol]}")
    model = TritonModel(address, LUNG, options=TransportOptions(ready_timeout_s=10))
    local = LocalBackend(threads=1).open(locked.repository, LUNG)
    try:
        assert model.use_shm, "shared-memory registration carried the key"
        batch = np.random.default_rng(0).uniform(-1000, 400, (1, *[d if d > 0 else 16 for d in model.input.dims]))
        batch = batch.astype(np.float32)
        np.testing.assert_allclose(model.predict(batch), local.predict(batch), rtol=1e-5, atol=1e-5)
        regions = [p for p in Path("/dev/shm").iterdir() if p.name.startswith(f"clara_napari_{os.getpid()}_")]
        assert regions and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in regions)   # the client's own
        out = TritonModel(address, "double", options=TransportOptions(ready_timeout_s=10, shared_memory=False))
        assert np.array_equal(out.predict(np.ones((1, 1, 2, 2, 2), np.float32)), np.full((1, 1, 2, 2, 2), 2.0))
        out.close()
    finally:
        model.close()


@pytest.mark.triton
def test_server_files_and_shared_memory_are_owner_only(locked):
    assert stat.S_IMODE(locked.workdir.stat().st_mode) == 0o700
    assert locked.shm_regions, "the python backend's regions are known"
    for name in locked.shm_regions:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600, name
    for path in locked.workdir.rglob("*"):
        if not path.is_symlink():
            assert not stat.S_IMODE(path.stat().st_mode) & 0o077, path


# -- the attack against a running `serve` ----------------------------------------------------------
@pytest.mark.triton
def test_attack_refused_against_running_serve(repo, tmp_path):
    marker = _marker(tmp_path)
    served = tmp_path / "served"      # serve loads every model of its repository: the wanted ones only here
    for name in (LUNG, "double"):
        shutil.copytree(repo / name, served / name)
    repo = served
    before = _tree(repo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "clara_napari", "serve", "--models", str(repo)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not lines or not lines[-1].startswith("Ctrl-C")):
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        text = "\n".join(lines)
        assert lines and lines[-1].startswith("Ctrl-C"), text
        assert "this machine only" in text and "metrics off" in text and "model-repository" in text
        http = next(ln.split()[1] for ln in lines if ln.strip().startswith("HTTP"))
        key_file = Path(next(ln.split(" in ")[1].split()[0] for ln in lines if ln.strip().startswith("key")))
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not _processes_showing(key_file.read_text().strip())
        for path, body, headers in [("/v2/repository/models/evil/load", _attack_body(marker), {}),
                                    ("/v2/repository/models/evil/load", _attack_body(marker),
                                     {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
                                    (f"/v2/repository/models/{LUNG}/unload", b"{}", {}),
                                    ("/v2/repository/index", b"{}", {})]:
            status, answer = _request(http + path, body, headers)
            assert status == 403 and "restricted" in answer, (path, status, answer)
        _settle(marker)
        assert not marker.exists()
        # serve's clients infer without the key (that is what it is for)
        import tritonclient.http as thttp

        client = thttp.InferenceServerClient(http.split("//")[1])
        x = thttp.InferInput("x", [1, 1, 2, 2, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 1, 2, 2, 2), np.float32))
        assert np.array_equal(client.infer("double", [x]).as_numpy("y"), np.full((1, 1, 2, 2, 2), 2.0))
        client.close()
        # the owner, with the key file, may list the models
        status, answer = _request(http + "/v2/repository/index", b"{}", {KEY_HEADER: key_file.read_text().strip()})
        assert status == 200 and {m["name"] for m in json.loads(answer)} == {LUNG, "double"}
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            child.stdout.close()
    assert child.returncode == 0
    assert _tree(repo) == before


@pytest.mark.triton
def test_a_run_loads_only_its_model(monkeypatch):
    """The embedded server of a run serves the one model the run opens, reachable only with the key."""
    from clara_napari.core.session import choose_server, open_backend

    monkeypatch.delenv("NVIDIA_CLARA_TRTISURI", raising=False)
    backend = open_backend(choose_server(None), repository=MODELS)
    try:
        model = backend.open(MODELS, LUNG)
        server = backend.server
        assert server.model_names() == [LUNG]
        assert [a for a in server.process.args if a.startswith("--load-model")] == [f"--load-model={LUNG}"]
        out = model.predict(np.zeros((1, *[d if d > 0 else 8 for d in model.input.dims]), np.float32))
        assert out.shape[1] == 2 and np.all(np.isfinite(out))
        status, text = _request(f"{server.http_url}/v2/models/{LUNG}/infer", b"{}")
        assert status == 403 and "restricted" in text          # a plain client cannot even infer
        assert backend.list_models()[1].startswith(LUNG)        # `clara-napari models` sends the key
        model.close()
    finally:
        backend.close()


@pytest.mark.triton
def test_onnx_model_config_cannot_run_code_through_the_python_backend(tmp_path):
    """An ONNX model is served through the python backend; its config.pbtxt must not pass it
    instructions: ``EXECUTION_ENV_PATH`` would unpack a tarball and source its ``bin/activate``."""
    import tarfile

    marker = tmp_path / "env-ran"
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text(f"touch {marker}\n")
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / LUNG, repo / LUNG)
    with tarfile.open(repo / LUNG / "env.tar.gz", "w:gz") as tar:
        tar.add(env, arcname=".")
    with open(repo / LUNG / "config.pbtxt", "a") as config:
        tarball = repo / LUNG / "env.tar.gz"
        config.write(f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{tarball}" }} }}\n')
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    with EmbeddedServer(repo) as server:
        generated = (server.workdir / "models" / LUNG / "config.pbtxt").read_text(encoding="utf-8")
        config = text_format.Parse(generated, mc.ModelConfig())
        # only the program's own parameters (model file, format, runtime, threads) reach the backend
        assert "EXECUTION_ENV_PATH" not in generated
        assert set(config.parameters) <= {"clara_napari_model_folder", "clara_napari_model_filename",
                                          "clara_napari_format", "clara_napari_runtime", "clara_napari_threads"}
        assert not config.model_repository_agents.agents and not config.model_warmup
        assert server.model_names() == [LUNG]
    assert not marker.exists()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
                    "server.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2"],
                   cwd=folder, check=True, capture_output=True, timeout=60)
    return folder / "server.pem", folder / "server.key"


@pytest.mark.triton
def test_tls_serve_keeps_http_on_loopback(tmp_path):
    """``serve --host X --tls-cert --tls-key``: gRPC over TLS on X, HTTP (no TLS in Triton) on
    127.0.0.1 only. X is 127.0.0.2 here (tests stay on loopback), standing for a real interface."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    from clara_napari.core.serve_policy import serve_options

    cert, key = _self_signed(tmp_path / "certs")
    options = serve_options("0.0.0.0", tls_cert=str(cert), tls_key=str(key))
    assert options["http_host"] == "127.0.0.1"
    with EmbeddedServer(MODELS, models=[LUNG], **{**options, "host": "127.0.0.2"}) as server:
        assert server.grpc_url.startswith("grpcs://127.0.0.2:") and server.http_url.startswith("http://127.0.0.1:")
        with pytest.raises(OSError):   # HTTP is not on the gRPC address
            socket.create_connection(("127.0.0.2", server.ports["http"]), timeout=2).close()
        client = tgrpc.InferenceServerClient(f"127.0.0.2:{server.ports['grpc']}", ssl=True,
                                             root_certificates=str(cert))
        try:
            assert client.is_model_ready(LUNG)   # serve: model state is open to clients, over TLS
            with pytest.raises(InferenceServerException, match="restricted"):
                client.unload_model(LUNG)
        finally:
            client.close()
        plain = tgrpc.InferenceServerClient(f"127.0.0.2:{server.ports['grpc']}")
        try:
            with pytest.raises(InferenceServerException):   # clear text to the TLS port
                plain.is_server_live(client_timeout=5)
        finally:
            plain.close()
