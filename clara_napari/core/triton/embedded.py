"""The embedded Triton Inference Server: the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel.

Parts: :mod:`.locations` (the binary, this environment's packages, ports), :mod:`.repository`
(the generated repository and backend folder), :mod:`.processes` (the child, its stubs and their
shared memory), :mod:`.workdirs` (the owner-only temp folder), :mod:`.keys` (the per-start key).

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
this process knows (:func:`.keys.server_headers` hands it to this process's own clients); no metrics
port; the server runs under umask 077 in an owner-only temp folder that records its owner's PID (a
folder left by a killed run is removed at the next start), and the python backend's shared memory
(patient voxels) is made owner-only as soon as it appears.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ServerError
from ..model_repository import ModelSpec
from .keys import GRPC_KEY_HEADER, KEY_HEADER, LIVE, key_headers
from .locations import free_port, tritonserver_dir
from .processes import (
    SPAWNER,
    die_with_parent,
    group_members,
    owner_only_regions,
    scrub_argument,
    stub_regions,
)
from .repository import prepare_backends, prepare_repository
from .workdirs import TEMP_PREFIX, remove_stale_workdirs, write_owner, write_private

log = logging.getLogger(__name__)

__all__ = ["API_GROUPS", "ALWAYS_RESTRICTED", "EMBEDDED_RESTRICTED", "EmbeddedServer", "GRPC_KEY_HEADER", "KEY_HEADER",
           "SERVE_RESTRICTED", "TEMP_PREFIX", "kill_on_stop"]

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


def _restricted_in(args: list[str]) -> set[str]:
    """The API groups that ``args`` already restrict (with their own key)."""
    groups: set[str] = set()
    for arg in args:
        for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
            if arg.startswith(flag):
                groups |= set(re.split(r"[:]", arg[len(flag):], maxsplit=1)[0].split(","))
    return groups


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
        write_private(path, self.key + "\n")
        return path

    def auth_headers(self, protocol: str = "http") -> dict[str, str]:
        """The header that opens the restricted APIs (gRPC metadata keys carry Triton's prefix)."""
        return key_headers(protocol, self.key)

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmbeddedServer:
        with self._lock:
            if self.running:
                return self
            dist = tritonserver_dir()
            remove_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))   # mode 0700
            write_owner(self.workdir)
            self.key = secrets.token_urlsafe(32)
            try:
                backends = prepare_backends(dist, self.workdir)
                models, self.models = prepare_repository(self.workdir, self.repository, self.wanted,
                                                         self.runtime, self.threads)
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
                    self.process = SPAWNER.popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                                 stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
                LIVE.add(self)
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
            regions = sorted(set(self.shm_regions) | set(stub_regions(process.pid)))
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
            while group_members(process.pid) and time.monotonic() < deadline:
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
        LIVE.discard(self)


    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.http_url}/v2/health/ready"
        headers = {**self.headers, **self.auth_headers("http")}
        scrubbed = False
        while True:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"the embedded Triton server exited during start-up: {self._log_reason()}")
            owner_only_regions(self.process.pid)
            if not scrubbed and self.log_path is not None and self.log_path.stat().st_size > 0:
                scrubbed = scrub_argument(self.process.pid, self.key)   # it logs once its options are parsed
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
        if not scrubbed and not scrub_argument(self.process.pid, self.key):
            log.warning("could not hide the embedded server's key from its command line (pid %d)", self.process.pid)
        # remembered now: if the server is killed, its stubs may die before they can unlink them
        self.shm_regions = owner_only_regions(self.process.pid)
        with contextlib.suppress(OSError, ValueError, AttributeError), urllib.request.urlopen(
                urllib.request.Request(f"{self.http_url}/v2", headers=headers), timeout=5) as response:
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
    for server in list(LIVE):
        server.kill_on_stop = True


@atexit.register
def _stop_all() -> None:
    for server in list(LIVE):
        with contextlib.suppress(OSError, subprocess.SubprocessError, ServerError):
            server.stop()
