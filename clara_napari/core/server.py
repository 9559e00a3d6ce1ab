"""The embedded Triton Inference Server: the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel.

That build (Triton 2.51, CPU) has only the python backend. So the launcher prepares, in a
temporary folder:

* a backend folder whose ``python/`` holds the wheel's python backend plus the stub built for
  *this* interpreter's Python version (``python_backend_stubs/<ver>/``);
* a model repository where each ONNX, OpenVINO IR or TorchScript model of the user's (standard)
  repository is served by the python-backend program :mod:`clara_napari.core.triton_model.model`,
  which runs it with the project's runtime layer (:mod:`clara_napari.core.runtimes`: OpenVINO by
  default for ONNX), and python-backend models are linked as they are.

The stub links ``libpython3.X.so.1.0`` without a path, so this interpreter's ``LIBDIR`` goes first on
``LD_LIBRARY_PATH`` (else another Python's library is loaded and model loading fails), and the
model program puts this environment's ``site-packages`` on ``sys.path``.
The server binds to loopback on free ports, is stopped on exit, on exceptions and on Ctrl-C, and
dies with this process (``PR_SET_PDEATHSIG``) so it never outlives it.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

from .errors import ConfigError, ServerError
from .model_repository import ModelSpec, list_models
from .runtimes import FORMAT_RUNTIMES, choose_runtime, is_supported_format
from .triton_model import MODEL_PROGRAM

log = logging.getLogger(__name__)

_LIVE: "weakref.WeakSet[EmbeddedServer]" = weakref.WeakSet()

def tritonserver_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerError("the embedded server needs the nvidia-pytriton package (pip install nvidia-pytriton).") from None
    folder = Path(pytriton.__file__).parent / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise ServerError(f"{folder}: the nvidia-pytriton wheel has no tritonserver binary (unsupported platform?).")
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()  # own session: a terminal's Ctrl-C reaches only us, and we stop the server in order


class _Spawner:
    """Starts children from one long-lived thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process; a
    server started from a short-lived worker (a napari worker thread) would otherwise be killed
    when that worker finishes.
    """

    def __init__(self) -> None:
        import queue

        self._jobs: "queue.Queue" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        import concurrent.futures as cf

        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="clara-napari-spawner", daemon=True)
                self._thread.start()
        future: cf.Future = cf.Future()
        self._jobs.put((future, args, kwargs))
        return future.result()

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._jobs.get()
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:  # handed back to the caller
                future.set_exception(exc)


_SPAWNER = _Spawner()


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _stub_regions(pgid: int) -> list[str]:
    """Names of the python backend's shared-memory regions, read from its stubs' command lines."""
    names = []
    for pid in _group_members(pgid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region")]
    return names


def python_paths() -> list[str]:
    """Where this environment's packages are, for the stub's ``sys.path``."""
    paths = list(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        paths.append(site.getusersitepackages())
    paths += [p for p in sys.path if p.endswith("site-packages") or p.endswith("dist-packages")]
    project = str(Path(__file__).resolve().parents[2])
    return list(dict.fromkeys(paths + [project]))


def model_program_paths() -> list[str]:
    """``sys.path`` entries for the model program: this project's folder first, then the packages."""
    project = str(Path(__file__).resolve().parents[2])
    return list(dict.fromkeys([project] + python_paths()))


class EmbeddedServer:
    """A ``tritonserver`` child process serving ``repository`` on loopback.

    Use as a context manager, or ``start()``/``stop()``. ``startup_timeout`` bounds the wait for
    readiness; a failure quotes the server log's reason.
    """

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, startup_timeout: float = 120.0, threads: int | None = None,
                 grpc_tls: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 headers: dict[str, str] | None = None, runtime: str | None = None) -> None:
        self.repository = Path(repository).resolve()
        #: the runtime for models whose format admits it (default: the fastest installed)
        self.runtime = runtime
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout
        self.threads = threads or os.cpu_count() or 1
        self.grpc_tls = grpc_tls
        self.extra_args = list(extra_args or [])
        #: headers for this launcher's own readiness polls (a server started with restricted APIs)
        self.headers = dict(headers or {})
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.version = ""
        self.models: list[ModelSpec] = []
        #: the python backend's shared-memory regions (one per model instance), known once ready
        self.shm_regions: list[str] = []
        self._lock = threading.Lock()

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.grpc_tls else 'grpc'}://{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "EmbeddedServer":
        with self._lock:
            if self.running:
                return self
            dist = tritonserver_dir()
            self.workdir = Path(tempfile.mkdtemp(prefix="clara-napari-triton-"))
            try:
                backends = self._prepare_backends(dist)
                models = self._prepare_repository()
                for key, port in self.ports.items():
                    self.ports[key] = port or free_port(self.host)
                self.log_path = self.workdir / "tritonserver.log"
                command = [
                    str(dist / "bin" / "tritonserver"),
                    f"--model-repository={models}",
                    f"--backend-directory={backends}",
                    f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                    f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                    f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                    "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
                    "--exit-timeout-secs=5", "--strict-readiness=true",
                    f"--cache-directory={self.workdir / 'cache'}",
                    "--model-control-mode=explicit", "--load-model=*",
                    "--log-verbose=0",
                ]
                if self.grpc_tls:
                    command += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.grpc_tls['cert']}",
                                f"--grpc-server-key={self.grpc_tls['key']}"]
                    if self.grpc_tls.get("root"):
                        command += [f"--grpc-root-cert={self.grpc_tls['root']}", "--grpc-use-ssl-mutual=true"]
                command += self.extra_args
                env = dict(os.environ)
                libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(dist.parent.parent / "nvidia_pytriton.libs")]
                env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libdirs if p] +
                                                         [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
                env.pop("PYTHONHOME", None)
                with open(self.log_path, "wb") as log_file:
                    self.process = _SPAWNER.popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
                _LIVE.add(self)
                self._wait_ready()
            except BaseException:
                self._shutdown()
                raise
            log.info("embedded Triton %s ready at %s (models: %s)", self.version, self.http_url,
                     ", ".join(self.model_names()))
            return self

    def stop(self) -> None:
        with self._lock:
            self._shutdown()

    def wait(self) -> int:
        """Block until the server exits (e.g. ``clara-napari serve``)."""
        assert self.process is not None
        return self.process.wait()

    def _shutdown(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            regions = sorted(set(self.shm_regions) | set(_stub_regions(process.pid)))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
            # python-backend stubs notice the server is gone and clean up their shared memory;
            # give them that chance, then make sure nothing of the group is left
            deadline = time.monotonic() + 10
            while _group_members(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            for name in regions:
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    os.unlink(f"/dev/shm/{name}")
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _LIVE.discard(self)

    # -- preparation --------------------------------------------------------------------------
    def _prepare_backends(self, dist: Path) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"{dist}: the nvidia-pytriton wheel has no python backend stub for Python {version}.")
        target = self.workdir / "backends" / "python"
        target.mkdir(parents=True)
        for item in (dist / "backends" / "python").iterdir():
            if item.name != "__pycache__":
                (target / item.name).symlink_to(item)
        (target / "triton_python_backend_stub").symlink_to(stub)
        return target.parent

    def _prepare_repository(self) -> Path:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        out = self.workdir / "models"
        out.mkdir()
        self.models = []
        for spec in list_models(self.repository):
            source = spec.path.parent
            if is_supported_format(spec.runtime):
                runtime = self._model_runtime(spec)
                if runtime is None:
                    continue
                config = mc.ModelConfig()
                text_format.Parse(spec.path.read_text(), config)
                config.name = spec.name
                config.ClearField("platform")
                config.backend = "python"
                config.ClearField("default_model_filename")
                del config.instance_group[:]
                config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
                versions = sorted(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit())
                folder = out / spec.name
                folder.mkdir()
                for version in versions:
                    spec.model_file(version)  # each version has its file
                    (folder / str(version)).mkdir()
                    shutil.copyfile(MODEL_PROGRAM, folder / str(version) / "model.py")
                    (folder / str(version) / "clara_napari_sys_path.json").write_text(
                        json.dumps(model_program_paths()))
                params = {"clara_napari_model_folder": str(source),
                          "clara_napari_model_filename": spec.model_file(versions[-1]).name if versions else "",
                          "clara_napari_format": spec.runtime, "clara_napari_runtime": runtime,
                          "clara_napari_threads": str(self.threads)}
                for key, value in params.items():
                    config.parameters[key].string_value = value
                (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
            elif spec.runtime == "python":
                (out / spec.name).symlink_to(source, target_is_directory=True)
            else:
                log.warning("%s: the embedded server cannot serve %r models; skipped", spec.path, spec.runtime)
                continue
            self.models.append(spec)
        if not self.models:
            raise ServerError(f"{self.repository}: no model the embedded server can serve "
                              "(ONNX, OpenVINO, TorchScript or python backend).")
        return out

    def _model_runtime(self, spec: ModelSpec) -> str | None:
        """The runtime serving ``spec``: the requested one where its format admits it, else the default."""
        requested = self.runtime if self.runtime in FORMAT_RUNTIMES.get(spec.runtime, ()) else None
        try:
            return choose_runtime(spec.runtime, requested, where=str(spec.path), preferred=spec.preferred_runtime)
        except ConfigError as exc:
            log.warning("%s; skipped", exc)
            return None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.http_url}/v2/health/ready"
        while True:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"the embedded Triton server exited during start-up: {self._log_reason()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                reason = self._log_reason()
                self._shutdown()
                raise ServerError(f"the embedded Triton server was not ready within {self.startup_timeout:.0f} s: {reason}")
            time.sleep(0.25)
        # remembered now: if the server is killed, its stubs may die before they can unlink them
        self.shm_regions = _stub_regions(self.process.pid)
        with contextlib.suppress(Exception), urllib.request.urlopen(
                urllib.request.Request(f"{self.http_url}/v2", headers=self.headers), timeout=5) as response:
            import json

            self.version = json.load(response).get("version", "")

    def _log_reason(self) -> str:
        """The most telling lines of the server log (errors first)."""
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.match(r"^E\d{4}", ln) or "error" in ln.lower() or "failed" in ln.lower()]
        chosen = (errors or lines)[-3:]
        return " | ".join(re.sub(r"^[EWI]\d{4} [\d:.]+ \d+ \S+\] ", "", ln)[:300] for ln in chosen) or "no log output"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()
