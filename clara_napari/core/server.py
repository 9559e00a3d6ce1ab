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

Locked down (docs/security.md, "Embedded Triton server and ``serve``"): explicit model control with
only the wanted models loaded at start; the APIs in ``restricted`` (by default all but health; the
model-repository API that loads code always) need a header with a key drawn per start, which only
this process knows (:func:`server_headers` hands it to this process's own clients); no metrics
port; the server runs under umask 077 in an owner-only temp folder that records its owner's PID (a
folder left by a killed run is removed at the next start), and the python backend's shared memory
(patient voxels) is made owner-only as soon as it appears.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import site
import socket
import stat
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
from .model_repository import ModelSpec, is_plain_name, list_models
from .runtimes import FORMAT_RUNTIMES, choose_runtime, is_supported_format
from .triton_model import MODEL_PROGRAM

log = logging.getLogger(__name__)

_LIVE: "weakref.WeakSet[EmbeddedServer]" = weakref.WeakSet()

#: Triton's API groups for ``--http-restricted-api`` / ``--grpc-restricted-protocol`` (Triton 2.51)
API_GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
              "statistics", "trace", "logging")
#: restricted on the embedded server of a run: everything but the readiness probe
EMBEDDED_RESTRICTED = tuple(g for g in API_GROUPS if g != "health")
#: restricted on every start: load/unload (runs code), shared-memory registration (reads and writes
#: other regions), trace and log settings (write files anywhere)
ALWAYS_RESTRICTED = ("shared-memory", "model-repository", "trace", "logging")
#: restricted on ``serve`` (clients elsewhere infer freely): what changes or reveals server state
SERVE_RESTRICTED = (*ALWAYS_RESTRICTED, "statistics")
#: the header carrying the per-start key (gRPC metadata needs Triton's prefix)
KEY_HEADER = "clara-napari-key"
GRPC_KEY_HEADER = "triton-grpc-protocol-" + KEY_HEADER
TEMP_PREFIX = "clara-napari-triton-"
_OWNER_FILE = "owner.pid"



def embedded_server_missing() -> str | None:
    """Why the embedded server cannot run here (one sentence), or ``None`` when it can."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        return ("the embedded Triton server is not installed (pip install 'clara-napari[server]'; "
                "Linux x86-64/aarch64 with glibc >= 2.35 only)")
    return None


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
    os.umask(0o077)  # the server's files and shared memory (patient voxels) are owner-only
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


def server_process_group(pgid: int) -> tuple[list[int], list[str]]:
    """The live processes of an embedded server's process group ``pgid`` (``tritonserver`` and its
    python-backend stubs) and the names of the stubs' shared-memory regions (``/dev/shm``): what
    ``clara-napari bench`` measures the server's memory on."""
    return _group_members(pgid), _stub_regions(pgid)


def _owner_only_regions(pgid: int) -> list[str]:
    """Make the python backend's shared-memory regions owner-only; returns their names.

    The backend creates them with mode 0644 whatever the umask (Boost ``fchmod``s them); they
    hold patient voxels. Called every poll while the server starts, before any voxel is sent.
    """
    names = _stub_regions(pgid)
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(f"/dev/shm/{name}").st_mode & 0o077:
                os.chmod(f"/dev/shm/{name}", 0o600)
    return names


def python_paths() -> list[str]:
    """Where this environment's packages are, for the stub's ``sys.path``."""
    paths = list(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        paths.append(site.getusersitepackages())
    paths += [p for p in sys.path if p.endswith("site-packages") or p.endswith("dist-packages")]
    project = str(Path(__file__).resolve().parents[2])
    return list(dict.fromkeys(paths + [project]))


def _process_start_time(pid: int) -> str | None:
    """The start time (clock ticks after boot) of process ``pid``, None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _owner_alive(folder: Path) -> bool | None:
    """Whether the process recorded in ``folder`` lives (None: nothing recorded)."""
    try:
        pid_text, _, started = (folder / _OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    now = _process_start_time(pid)
    return now is not None and (not started or now == started)   # a reused PID is another process


def _referenced_by_a_process(folder: Path) -> bool:
    """Whether a live process names ``folder`` on its command line (a server of an older version)."""
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    return True
    return False


def remove_stale_workdirs(temp_root: str | Path | None = None, *, min_age_s: float = 600.0) -> list[Path]:
    """Remove the temp folders of embedded servers whose owner died (SIGKILL leaves them behind).

    Only this user's folders named ``clara-napari-triton-*``, not links, whose recorded owner PID is
    dead (or reused by another process); a folder without a record (an older version, or one
    being created this instant) only when older than ``min_age_s`` and named by no live process.
    Returns the folders removed.
    """
    root = Path(temp_root or tempfile.gettempdir())
    removed = []
    try:
        candidates = sorted(root.glob(TEMP_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        alive = _owner_alive(folder)
        if alive or (alive is None and time.time() - info.st_mtime < min_age_s):
            continue
        if _referenced_by_a_process(folder):   # e.g. a server that outlived its owner still uses it
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            log.info("removed %s, left by a run that was killed", folder)
            removed.append(folder)
    return removed


#: keys of embedded servers that another process of this user started and handed over on purpose
#: (Dask workers sharing their machine's server): (host, port) → (protocol, key)
_SHARED_KEYS: dict[tuple[str, int], tuple[str, str]] = {}


def share_server_key(url: str, key: str) -> None:
    """Let this process's clients open the restricted APIs of the embedded server at ``url``, started
    by another process of this user that handed its key over (never through the environment or a
    command line: a Dask task's arguments on loopback, or an owner-only state file)."""
    from .backends.triton import parse_address

    address = parse_address(url)
    hosts = {address.host} | ({"127.0.0.1", "localhost"} if address.host in ("127.0.0.1", "localhost") else set())
    for host in hosts:
        _SHARED_KEYS[(host, address.port)] = (address.protocol, key)


def server_headers(host: str, port: int) -> dict[str, str]:
    """The key header for an embedded server of this process listening at ``host:port`` ({} if none).

    Only this process's clients get it (and those it was handed to: :func:`share_server_key`); the
    key is never in the environment, a command line or a log.
    """
    for server in list(_LIVE):
        if not server.key:   # set from start until the process is gone (it still answers while stopping)
            continue
        for protocol, bound in (("http", server.http_host), ("grpc", server.host)):
            names = {bound} | ({"127.0.0.1", "localhost"} if bound in ("127.0.0.1", "0.0.0.0") else set())
            if server.ports.get(protocol) == port and host in names:
                return server.auth_headers(protocol)
    if (host, port) in _SHARED_KEYS:
        protocol, key = _SHARED_KEYS[(host, port)]
        return {GRPC_KEY_HEADER if protocol == "grpc" else KEY_HEADER: key}
    return {}


def _restricted_in(args: list[str]) -> set[str]:
    """The API groups that ``args`` already restrict (with their own key)."""
    groups: set[str] = set()
    for arg in args:
        for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
            if arg.startswith(flag):
                groups |= set(re.split(r"[:]", arg[len(flag):], maxsplit=1)[0].split(","))
    return groups


def _scrub_argument(pid: int, secret: str) -> bool:
    """Overwrite ``secret`` in the command line of our child ``pid`` once it has parsed it.

    ``/proc/<pid>/cmdline`` is readable by every user, and Triton takes its restricted-API key only
    as an argument; its argument area is rewritten through ``/proc/<pid>/mem`` (allowed for our own
    child). Returns whether the secret is gone from the command line.
    """
    if not secret:
        return True
    needle = secret.encode()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])   # arg_start, arg_end (fields 48 and 49)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            at = area.find(needle)
            while at >= 0:
                mem.seek(start + at)
                mem.write(b"*" * len(needle))
                at = area.find(needle, at + len(needle))
        return needle not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False


def _write_private(path: Path, text: str) -> None:
    """A new owner-only file (0600, never through an existing file or link)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w", encoding="utf-8") as file:
        file.write(text)


def _link_model_folder(source: Path, target: Path) -> None:
    """``target`` mirrors a python-backend model folder with links, its version folders as real
    folders of links: the stub's ``__pycache__`` lands in our temp folder, never in the user's."""
    target.mkdir(mode=0o700)
    for item in sorted(source.iterdir()):
        if item.name.isdigit() and item.is_dir() and not item.is_symlink():
            (target / item.name).mkdir(mode=0o700)
            for child in sorted(item.iterdir()):
                if child.name != "__pycache__":
                    (target / item.name / child.name).symlink_to(child)
        else:
            (target / item.name).symlink_to(item)


def model_program_paths() -> list[str]:
    """``sys.path`` entries for the model program: this project's folder first, then the packages."""
    project = str(Path(__file__).resolve().parents[2])
    return list(dict.fromkeys([project] + python_paths()))


class EmbeddedServer:
    """A ``tritonserver`` child process serving ``repository`` on loopback.

    Use as a context manager, or ``start()``/``stop()``. ``startup_timeout`` bounds the wait for
    readiness; a failure quotes the server log's reason. ``models`` names the models to serve
    (default: every model of the repository); they are loaded at start and nothing can be loaded
    or unloaded later. ``restricted`` are the API groups that need :meth:`auth_headers`.
    """

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, startup_timeout: float = 120.0, threads: int | None = None,
                 grpc_tls: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 headers: dict[str, str] | None = None, models: list[str] | None = None,
                 restricted: tuple[str, ...] = EMBEDDED_RESTRICTED, metrics: bool = False,
                 http_host: str | None = None, runtime: str | None = None) -> None:
        self.repository = Path(repository).resolve()
        #: the runtime for models whose format admits it (default: the fastest installed)
        self.runtime = runtime
        self.host = host
        #: HTTP (and metrics) may bind elsewhere than gRPC: Triton's HTTP has no TLS
        self.http_host = http_host or host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout
        self.threads = threads or os.cpu_count() or 1
        self.grpc_tls = grpc_tls
        self.extra_args = list(extra_args or [])
        #: headers for this launcher's own readiness polls (a server started with restricted APIs)
        self.headers = dict(headers or {})
        self.wanted = list(models) if models else None
        self.restricted = tuple(dict.fromkeys((*restricted, *ALWAYS_RESTRICTED)))
        self.metrics = metrics
        #: the per-start key of the restricted APIs (drawn in ``start``)
        self.key = ""
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.version = ""
        self.models: list[ModelSpec] = []
        #: the python backend's shared-memory regions (one per model instance), known once ready
        self.shm_regions: list[str] = []
        #: set by :func:`kill_on_stop` (a signal): stop() kills at once instead of a graceful shutdown
        self.kill_on_stop = False
        self._lock = threading.Lock()

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.grpc_tls else 'grpc'}://{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.http_host}:{self.ports['metrics']}/metrics" if self.metrics else ""

    def write_key_file(self) -> Path | None:
        """The key in an owner-only file of the (owner-only) temp folder, for the user's own clients."""
        if not self.key or self.workdir is None:
            return None
        path = self.workdir / "serve.key"
        _write_private(path, self.key + "\n")
        return path

    def auth_headers(self, protocol: str = "http") -> dict[str, str]:
        """The header that opens the restricted APIs (gRPC metadata keys carry Triton's prefix)."""
        if not self.key:
            return {}
        return {GRPC_KEY_HEADER if protocol == "grpc" else KEY_HEADER: self.key}

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
            remove_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))   # mode 0700
            _write_private(self.workdir / _OWNER_FILE, f"{os.getpid()} {_process_start_time(os.getpid()) or ''}\n")
            self.key = secrets.token_urlsafe(32)
            try:
                backends = self._prepare_backends(dist)
                models = self._prepare_repository()
                for key, port in self.ports.items():
                    self.ports[key] = port or free_port(self.host if key == "grpc" else self.http_host)
                self.log_path = self.workdir / "tritonserver.log"
                command = [
                    str(dist / "bin" / "tritonserver"),
                    f"--model-repository={models}",
                    f"--backend-directory={backends}",
                    f"--http-address={self.http_host}", f"--http-port={self.ports['http']}",
                    f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                    "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
                    "--allow-sagemaker=false", "--allow-vertex-ai=false",   # never other listeners (AIP_MODE)
                    "--exit-timeout-secs=5", "--strict-readiness=true",
                    f"--cache-directory={self.workdir / 'cache'}",
                    "--model-control-mode=explicit", *[f"--load-model={m.name}" for m in self.models],
                    "--log-verbose=0",
                ]
                if self.metrics:
                    command += [f"--metrics-address={self.http_host}", f"--metrics-port={self.ports['metrics']}"]
                else:
                    command += ["--allow-metrics=false"]
                mine = [g for g in self.restricted if g not in _restricted_in(self.extra_args)]
                if mine:
                    command += [f"--http-restricted-api={','.join(mine)}:{KEY_HEADER}={self.key}",
                                f"--grpc-restricted-protocol={','.join(mine)}:{KEY_HEADER}={self.key}"]
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
                env["PYTHONDONTWRITEBYTECODE"] = "1"   # no __pycache__ in a python-backend model's folder
                with os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as log_file:
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
            if self.kill_on_stop and process.poll() is None:
                # interrupted: nothing to finish, the user waits; the regions are unlinked below
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
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
        self.key = ""
        _LIVE.discard(self)

    # -- preparation --------------------------------------------------------------------------
    def _prepare_backends(self, dist: Path) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"{dist}: the nvidia-pytriton wheel has no python backend stub for Python {version}.")
        target = self.workdir / "backends" / "python"
        (self.workdir / "backends").mkdir(mode=0o700)
        target.mkdir(mode=0o700)
        for item in (dist / "backends" / "python").iterdir():
            if item.name != "__pycache__":
                (target / item.name).symlink_to(item)
        (target / "triton_python_backend_stub").symlink_to(stub)
        return target.parent

    def _prepare_repository(self) -> Path:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        out = self.workdir / "models"
        out.mkdir(mode=0o700)
        self.models = []
        specs = list_models(self.repository)
        if self.wanted is not None:
            missing = [name for name in self.wanted if name not in {s.name for s in specs}]
            if missing:
                raise ServerError(f"{self.repository}: no model {missing[0]!r} in the repository "
                                  f"(models: {', '.join(s.name for s in specs) or 'none'}).")
            specs = [s for s in specs if s.name in self.wanted]
        for spec in specs:
            if not is_plain_name(spec.name):   # list_models checks it; a path must never come of it
                raise ServerError(f"{spec.path}: the model name {spec.name!r} is not a plain name.")
            source = spec.path.parent
            if is_supported_format(spec.runtime):
                runtime = self._model_runtime(spec)
                if runtime is None:
                    continue
                config = mc.ModelConfig()
                text_format.Parse(spec.path.read_text(encoding="utf-8"), config)
                config.name = spec.name
                config.ClearField("platform")
                config.backend = "python"
                config.ClearField("default_model_filename")
                # an ONNX model's config is data: nothing of it may reach the python backend as an
                # instruction (EXECUTION_ENV_PATH unpacks and sources an environment: shell code)
                for field in ("parameters", "model_repository_agents", "model_warmup"):
                    config.ClearField(field)
                del config.instance_group[:]
                config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
                versions = sorted(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit())
                folder = out / spec.name
                folder.mkdir(mode=0o700)
                program = Path(MODEL_PROGRAM).read_text(encoding="utf-8")
                for version in versions:
                    spec.model_file(version)  # each version has its file
                    (folder / str(version)).mkdir(mode=0o700)
                    _write_private(folder / str(version) / "model.py", program)
                    _write_private(folder / str(version) / "clara_napari_sys_path.json",
                                   json.dumps(model_program_paths()))
                # the program's instructions: ours only (the model's own parameters were dropped above)
                params = {"clara_napari_model_folder": str(source),
                          "clara_napari_model_filename": spec.model_file(versions[-1]).name if versions else "",
                          "clara_napari_format": spec.runtime, "clara_napari_runtime": runtime,
                          "clara_napari_threads": str(self.threads)}
                for key, value in params.items():
                    config.parameters[key].string_value = value
                _write_private(folder / "config.pbtxt", text_format.MessageToString(config))
            elif spec.runtime == "python":
                _link_model_folder(source, out / spec.name)
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
        headers = {**self.headers, **self.auth_headers("http")}
        scrubbed = False
        while True:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"the embedded Triton server exited during start-up: {self._log_reason()}")
            _owner_only_regions(self.process.pid)
            if not scrubbed and self.log_path is not None and self.log_path.stat().st_size > 0:
                scrubbed = _scrub_argument(self.process.pid, self.key)   # it logs once its options are parsed
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                reason = self._log_reason()
                self._shutdown()
                raise ServerError(f"the embedded Triton server was not ready within {self.startup_timeout:.0f} s: {reason}")
            time.sleep(0.05 if scrubbed else 0.02)   # short: the backend's regions are 0644 until we see them
        if not scrubbed and not _scrub_argument(self.process.pid, self.key):
            log.warning("could not hide the embedded server's key from its command line (pid %d)", self.process.pid)
        # remembered now: if the server is killed, its stubs may die before they can unlink them
        self.shm_regions = _owner_only_regions(self.process.pid)
        with contextlib.suppress(Exception), urllib.request.urlopen(
                urllib.request.Request(f"{self.http_url}/v2", headers=headers), timeout=5) as response:
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


def kill_on_stop() -> None:
    """From a signal handler (Ctrl-C, SIGTERM): every live embedded server is killed when it is
    stopped (its process group at once, then its shared memory unlinked and its folder removed),
    not shut down gracefully, so that the clean-up takes well under a second."""
    for server in list(_LIVE):
        server.kill_on_stop = True


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()
