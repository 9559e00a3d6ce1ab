"""Triton Inference Server backend (KServe v2 protocol, HTTP or gRPC, via tritonclient).

Wire rules: tensors always travel as binary (never JSON); system shared memory is used
automatically when the server is on this host and accepts it (else the network); several
requests are in flight (the engine's ``requests_in_flight``), each on one of the model's own
long-lived threads with its own client and its own shared-memory slot (so descriptors and
threads stay flat however many volumes a session runs); inputs are cast to the model's
datatype; each HTTP request stays under the server's input size limit; shapes and batch sizes are checked against the server's
model config before the first request.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelMismatchError, ServerError
from ..interrupts import stop_requested
from ..masking import mask, remember, split_userinfo
from ..model_repository import ModelSpec, read_model_config, spec_from_proto
from .base import pick_tensor
from .client_threads import ClientThreads, destroy_gevent_hub

log = logging.getLogger(__name__)

#: Triton >= 2.59 refuses HTTP inputs above 64 MB by default; stay well under it.
HTTP_MAX_REQUEST_BYTES = 60 * 1024 * 1024
POLL_S = 0.5
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}
_REGIONS: "weakref.WeakSet[_ShmSlot]" = weakref.WeakSet()
_COUNTER = itertools.count()


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    protocol: str       # "http" or "grpc"
    tls: bool = False
    #: ``user:pass`` of ``scheme://user:pass@host``: sent as HTTP basic auth, never printed
    userinfo: str = field(default="", repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = {("http", False): "http", ("http", True): "https", ("grpc", False): "grpc", ("grpc", True): "grpcs"}
        return f"{scheme[(self.protocol, self.tls)]}://{self.url}"

    @property
    def is_local(self) -> bool:
        return self.host.lower() in _LOCAL_HOSTS or self.host.startswith("127.")


def parse_address(text: str, protocol: str | None = None) -> Address:
    """``host:port``, ``http[s]://host:port`` or ``grpc[s]://host:port`` → :class:`Address`
    (``user:pass@`` before the host becomes basic auth, and is masked in every message)."""
    raw, userinfo = split_userinfo(text.strip())
    remember(userinfo, userinfo.partition(":")[2])
    text = mask(text)
    scheme = ""
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https", "grpc", "grpcs"):
            raise ServerError(f"{text}: unknown scheme {scheme!r} (use http, https, grpc or grpcs).")
    raw = raw.rstrip("/")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        host, port_text = raw, ""
    proto = {"http": "http", "https": "http", "grpc": "grpc", "grpcs": "grpc"}.get(scheme, (protocol or "http").lower())
    if not port_text:
        port = 8001 if proto == "grpc" else 8000
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ServerError(f"{text}: the port {port_text!r} is not a number between 1 and 65535.")
    if not host:
        raise ServerError(f"{text}: no host in the server address.")
    return Address(host=host, port=port, protocol=proto, tls=scheme in ("https", "grpcs"), userinfo=userinfo)


def request_headers(options: "TransportOptions", address: Address) -> dict[str, str] | None:
    """The headers sent with every call: the options' headers, plus basic auth from the URL's
    ``user:pass@`` (unless an Authorization header is given)."""
    headers = dict(options.headers or {})
    if address.userinfo and not any(k.lower() == "authorization" for k in headers):
        import base64

        token = base64.b64encode(address.userinfo.encode("utf-8")).decode("ascii")
        remember(token)
        headers["Authorization"] = f"Basic {token}"
    return headers or None


@dataclass
class TransportOptions:
    """How to talk to the server: protocol, shared memory, time limits, TLS and extra headers."""

    protocol: str | None = None
    shared_memory: bool | None = None      # None: automatic (same host and accepted)
    timeout_s: float | None = None         # per request; default: the inferer's timeout_s
    ready_timeout_s: float = 60.0          # waiting for server/model readiness
    retries: int = 2                       # on connection errors, with backoff
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        remember(*(self.headers or {}).values())   # masked in every message and log line


class TritonBackend:
    """Opens models on one Triton server (the address :func:`~clara_napari.core.session.choose_server`
    decided) and lists what it serves."""

    def __init__(self, address: Address | str | None = None, **options: Any) -> None:
        self.options = TransportOptions(**options)
        self.address: Address | None = (parse_address(address, self.options.protocol) if isinstance(address, str)
                                         else address)

    @property
    def description(self) -> str:
        """``Triton at ADDRESS``, or ``embedded Triton at ADDRESS`` when it is a server this process
        started (or whose key it was handed: a Dask worker on its machine's server)."""
        if self.address is None:
            return "Triton"
        from ..server import server_headers

        embedded = bool(server_headers(self.address.host, self.address.port))
        return f"{'embedded ' if embedded else ''}Triton at {self.address}"

    def server_address(self, model_name: str | None = None) -> Address:
        """Where requests go (the embedded backend starts its server here, loading ``model_name``)."""
        if self.address is None:
            raise ServerError("no Triton server address was given.")
        return self.address

    def open(self, repository: Path | None, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", inferer=None, model_loader=None) -> "TritonModel":
        address = self.server_address(model_name)
        expected = read_model_config(model_loader.model_spec_file_name) if model_loader is not None else None
        in_flight = inferer.requests_in_flight if inferer is not None else 2
        timeout = self.options.timeout_s or (inferer.timeout_s if inferer is not None else 120.0)
        model = TritonModel(address, model_name, version=version, input_name=input_name, output_name=output_name,
                            in_flight=in_flight, timeout_s=timeout, options=self.options, expected=expected)
        model.description = f"{self.description} ({model.transport})"
        return model

    def list_models(self, repository: Path | None = None) -> list[str]:
        address = self.server_address()
        return with_client(address, self.options, 30.0, functools.partial(self._list_models, address))

    def model_states(self) -> dict[str, str]:
        """The server's models: name → state (READY, UNAVAILABLE, ...)."""
        address = self.server_address()

        def read(client) -> dict[str, str]:
            headers = with_server_key(address, request_headers(self.options, address))
            wait_ready(client, address, self.options.ready_timeout_s, headers)
            return {e["name"]: e["state"] for e in repository_index(client, address, headers)}
        # on a thread of its own, closed with its gevent hub: the widget asks on every refresh
        return with_client(address, self.options, 30.0, read)

    def _list_models(self, address: Address, client) -> list[str]:
        headers = with_server_key(address, request_headers(self.options, address))
        wait_ready(client, address, self.options.ready_timeout_s, headers)
        rows = [self.description]
        for entry in repository_index(client, address, headers):
            line = f"{entry['name']:<28} version {entry['version'] or '-':<4} {entry['state']}"
            if entry.get("state") == "READY":
                with contextlib.suppress(Exception):
                    spec = server_model_spec(client, address, entry["name"], headers=headers)
                    line += ("  in " + ", ".join(t.describe() for t in spec.inputs) +
                             "  out " + ", ".join(t.describe() for t in spec.outputs) +
                             f"  max_batch {spec.max_batch_size}")
            rows.append(line)
        return rows

    def close(self) -> None:
        pass


class EmbeddedBackend(TritonBackend):
    """A Triton server this package starts (on first use; a run's server loads only the run's model)
    and stops when the backend closes — or one a ``provider`` keeps running (the napari widget's)."""

    def __init__(self, repository: Path | None, *, protocol: str = "http", threads: int | None = None,
                 runtime: str | None = None, provider=None, **options: Any) -> None:
        super().__init__(None, protocol=protocol, **options)
        self.repository = repository
        self.threads = threads
        self.runtime = runtime
        self.provider = provider
        self.server = None
        self.version = ""

    def server_address(self, model_name: str | None = None) -> Address:
        if self.address is None:
            from ..server import EmbeddedServer

            if self.provider is not None:
                server = self.provider(self.repository)
            else:
                wanted = [model_name] if model_name else None   # a run's server loads only its model
                server = self.server = EmbeddedServer(self.repository, threads=self.threads, models=wanted,
                                                      runtime=self.runtime).start()
            self.version = str(getattr(server, "version", "") or "")
            protocol = self.options.protocol or "http"
            self.address = Address("127.0.0.1", server.ports["grpc" if protocol == "grpc" else "http"], protocol)
        return self.address

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        self.address = None


# -- clients ---------------------------------------------------------------------------------
def with_server_key(address: Address, headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` plus the key of this process's embedded server at ``address`` (if it is one)."""
    from ..server import server_headers

    merged = {**server_headers(address.host, address.port), **(headers or {})}
    return merged or None


def make_client(address: Address, options: TransportOptions, timeout_s: float):
    """A tritonclient client for ``address``: TLS with a CA file (and an optional client
    certificate) for ``https://`` and ``grpcs://``."""
    for name in ("ssl_ca", "ssl_cert", "ssl_key"):
        value = getattr(options, name)
        if value and not Path(value).is_file():
            raise ServerError(f"Triton at {address}: the {name.replace('_', ' ')} file {value} does not exist.")
    if bool(options.ssl_cert) != bool(options.ssl_key):
        raise ServerError(f"Triton at {address}: a client certificate needs both --ssl-cert and --ssl-key.")
    try:
        if address.protocol == "grpc":
            import tritonclient.grpc as tgrpc

            kwargs = {}
            if address.tls:
                kwargs = {"ssl": True, "root_certificates": options.ssl_ca, "private_key": options.ssl_key,
                          "certificate_chain": options.ssl_cert}
            return tgrpc.InferenceServerClient(address.url, **kwargs)
        import tritonclient.http as thttp

        kwargs = {"connection_timeout": min(timeout_s, 60.0), "network_timeout": timeout_s}
        if address.tls:
            import gevent.ssl

            ssl_options = {}
            if options.ssl_ca:
                ssl_options["ca_certs"] = options.ssl_ca
            if options.ssl_cert:
                ssl_options.update(certfile=options.ssl_cert, keyfile=options.ssl_key)
            kwargs.update(ssl=True, ssl_options=ssl_options, ssl_context_factory=gevent.ssl.create_default_context,
                          insecure=False)
        return thttp.InferenceServerClient(address.url, **kwargs)
    except Exception as exc:
        raise ServerError(f"Triton at {address}: cannot create a client ({_reason(exc)}).") from None


def with_client(address: Address, options: TransportOptions, timeout_s: float, fn):
    """``fn(client)`` with a fresh client on a short-lived thread of its own; the client and that
    thread's gevent hub are closed afterwards (a hub left behind holds descriptors for good)."""
    def job():
        client = make_client(address, options, timeout_s)
        try:
            return fn(client)
        finally:
            with contextlib.suppress(Exception):
                client.close()

    workers = ClientThreads(1, name="clara-triton-once", on_exit=destroy_gevent_hub)
    try:
        return workers.call(job)
    finally:
        workers.close()


def _close_thread_client(local: threading.local) -> None:
    """On a model's worker thread as it ends: close its client and its gevent hub."""
    client = getattr(local, "client", None)
    local.client = None
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
    destroy_gevent_hub()


def close_thread_client(local: threading.local) -> None:
    """Public form of :func:`_close_thread_client`, for other clients on :class:`ClientThreads`
    (``clara-napari bench``'s JSON predictor): close the thread's ``local.client`` and its gevent hub."""
    _close_thread_client(local)


def wait_ready(client, address: Address, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll readiness every 0.5 s (as the original operator did) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = ""
    checked_v1 = False
    while True:
        try:
            if client.is_server_ready(headers=headers):
                return
            last = "the server is not ready"
        except Exception as exc:
            last = _reason(exc)
            if any(word in last.lower() for word in ("restricted", "unauthorized", "forbidden", "unauthenticated",
                                                      "permission denied")):
                raise ServerError(f"Triton at {address} refused the request ({last}); pass the header it "
                                  "expects with --header KEY=VALUE.") from None
        if address.protocol == "http" and not checked_v1:
            status, body = _http_probe(address, headers)
            checked_v1 = status is not None
            if status in (401, 403):
                raise ServerError(f"Triton at {address} refused the request ({body or status}); pass the header it "
                                  "expects with --header KEY=VALUE.")
            if checked_v1 and _speaks_v1(address):
                raise ServerError(f"Triton at {address} speaks the TRTIS v1 API (/api/status); clara-napari needs the "
                                  "KServe v2 protocol of Triton 20.x or newer.")
        if time.monotonic() >= deadline:
            raise ServerError(f"Triton at {address} was not ready within {timeout_s:.0f} s ({last}).")
        time.sleep(POLL_S)


def _http_probe(address: Address, headers: dict[str, str] | None) -> tuple[int | None, str]:
    """Status and short body of ``/v2/health/ready`` (``None`` when nothing answers HTTP there)."""
    scheme = "https" if address.tls else "http"
    request = urllib.request.Request(f"{scheme}://{address.url}/v2/health/ready", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read().decode("utf-8", "replace") or "{}").get("error", "")
        except (ValueError, AttributeError):
            body = ""
        return exc.code, " ".join(str(body).split())[:200]
    except Exception:
        return None, ""


def _speaks_v1(address: Address) -> bool:
    scheme = "https" if address.tls else "http"
    try:
        urllib.request.urlopen(f"{scheme}://{address.url}/v2/health/ready", timeout=2).close()
        return False
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return False
    except Exception:
        return False
    for path in ("/api/status", "/api/health/ready"):
        with contextlib.suppress(Exception):
            urllib.request.urlopen(f"{scheme}://{address.url}{path}", timeout=2).close()
            return True
    return False


def server_model_spec(client, address: Address, name: str, version: str = "",
                      headers: dict[str, str] | None = None) -> ModelSpec:
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        config = client.get_model_config(name, version, headers=headers)
    except Exception as exc:
        raise ServerError(f"Triton at {address}: cannot read the config of model {name!r} ({_reason(exc)}).") from None
    if isinstance(config, dict):  # HTTP: the JSON form
        message = json_format.ParseDict(config, mc.ModelConfig(), ignore_unknown_fields=True)
    else:
        message = config.config
    return spec_from_proto(message)


def repository_index(client, address: Address, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The server's model repository index as ``[{"name", "version", "state"}]`` (HTTP or gRPC)."""
    try:
        index = client.get_model_repository_index(headers=headers)
    except Exception as exc:
        raise ServerError(f"Triton at {address}: cannot list the models ({_reason(exc)}).") from None
    entries = index if isinstance(index, list) else [
        {"name": m.name, "version": m.version, "state": m.state} for m in index.models]
    return [{"name": str(e.get("name") or ""), "version": str(e.get("version") or ""),
             "state": str(e.get("state") or "UNKNOWN")} for e in entries if e.get("name")]


def _reason(exc: BaseException) -> str:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    message = " ".join(str(message).split())
    return message[:300] or type(exc).__name__


def _is_connection_error(exc: BaseException) -> bool:
    text = _reason(exc).lower()
    return isinstance(exc, (ConnectionError, OSError, TimeoutError)) or any(
        key in text for key in ("unavailable", "connection refused", "connection reset", "failed to connect",
                                "broken pipe", "socket closed", "connect failed", "remote end closed",
                                "server disconnected", "eof occurred"))


def _is_retryable(exc: BaseException) -> bool:
    """Worth another try after a pause: the server went away (restart) or lost our shared memory."""
    text = _reason(exc).lower()
    # "no available versions": a server shutting down (or still loading) answers before its models are there
    return (_is_connection_error(exc) or "shared memory region" in text or "is not ready" in text
            or "no available versions" in text)


# -- the model -------------------------------------------------------------------------------
class _ShmSlot:
    """An input and an output system shared-memory region registered with the server.

    Clients are passed in rather than kept: an HTTP client belongs to the thread (gevent hub)
    that made it, and using it from another thread can block for good.
    """

    def __init__(self, client, in_bytes: int, out_bytes: int, headers: dict[str, str] | None = None) -> None:
        import tritonclient.utils.shared_memory as shm

        tag = f"clara_napari_{os.getpid()}_{next(_COUNTER)}"
        self.names = (f"{tag}_in", f"{tag}_out")
        self.sizes = (in_bytes, out_bytes)
        self.generation = 0
        self.handles = []
        try:
            for name, size in zip(self.names, self.sizes):
                # create_only: never adopt a region someone else made under our name (0600, ours)
                self.handles.append(shm.create_shared_memory_region(name, f"/{name}", size, create_only=True))
            for name, size in zip(self.names, self.sizes):
                client.register_system_shared_memory(name, f"/{name}", size, headers=headers)
        except BaseException:
            self.close(client, headers)
            raise
        _REGIONS.add(self)

    def close(self, client=None, headers: dict[str, str] | None = None) -> None:
        """Unregister (with ``client``, best effort) and unlink the regions."""
        import tritonclient.utils.shared_memory as shm

        if client is not None:
            for name in self.names:
                with contextlib.suppress(Exception):
                    client.unregister_system_shared_memory(name, headers=headers)
        for handle in self.handles:
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(handle)
        self.handles = []
        _REGIONS.discard(self)

    def unlink(self) -> None:
        """Remove the regions' names only (a request may still be using the mappings)."""
        for name in self.names:
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
        _REGIONS.discard(self)


class TritonModel:
    """A model on a Triton server, ready to predict batches (a window-engine predictor)."""

    def __init__(self, address: Address, name: str, *, version: str = "", input_name: str = "",
                 output_name: str = "", in_flight: int = 2, timeout_s: float = 120.0,
                 options: TransportOptions | None = None, expected: ModelSpec | None = None) -> None:
        self.address = address
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self.options = options or TransportOptions()
        self._local = threading.local()
        self._slots: "queue.LifoQueue[_ShmSlot]" = queue.LifoQueue()
        self._all_slots: list[_ShmSlot] = []
        self._generation = 0
        self._lock = threading.Lock()
        self.description = f"Triton at {address}"
        self._user_headers = request_headers(self.options, address)
        self.in_flight = in_flight
        self._closing = False
        # every client lives on one of these threads for the model's whole life (an HTTP client
        # belongs to the thread, its gevent hub, that made it): the engine's per-volume threads
        # only hand requests over, so nothing is left behind per volume
        self._workers = ClientThreads(in_flight, name="clara-triton",
                                      on_exit=functools.partial(_close_thread_client, self._local))
        self._finalizer = weakref.finalize(self, self._workers.close, 0.0)
        try:
            self._workers.call(self._set_up, input_name, output_name, expected)
        except BaseException:
            self.close()
            raise

    # -- set-up -------------------------------------------------------------------------------
    def _set_up(self, input_name: str, output_name: str, expected: ModelSpec | None) -> None:
        address, name, version = self.address, self.name, self.version
        client = self._client()
        wait_ready(client, address, self.options.ready_timeout_s, self.headers)
        self._wait_model(client)
        self.spec = server_model_spec(client, address, name, version, self.headers)
        if expected is not None:
            check_same_model(expected, self.spec, address)
        where = f"Triton at {address}, model {name!r}"
        self.input = pick_tensor(self.spec.inputs, input_name, "input", where)
        self.output = pick_tensor(self.spec.outputs, output_name, "output", where)
        self.max_batch_size = self.spec.max_batch_size
        self.use_shm = self._probe_shm(client) if self.options.shared_memory is not False else False
        self.transport = f"{address.protocol}{'+shm' if self.use_shm else ''}"

    @property
    def headers(self) -> dict[str, str] | None:
        """The user's headers (and basic auth from the URL), plus the key when the server is this
        process's embedded one (looked up on every call: a restarted embedded server has a new key)."""
        return with_server_key(self.address, self._user_headers)

    # -- set-up -------------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = make_client(self.address, self.options, self.timeout_s)
            self._local.client = client
        return client

    def _wait_model(self, client) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while True:
            try:
                if client.is_model_ready(self.name, self.version, headers=self.headers):
                    return
            except Exception as exc:
                if _is_connection_error(exc):
                    raise ServerError(f"Triton at {self.address}: lost the connection ({_reason(exc)}).") from None
            names, states = self._index(client)
            if self.name not in names:
                raise ServerError(f"Triton at {self.address} has no model {self.name!r} "
                                  f"(available: {', '.join(sorted(names)) or 'none'}).")
            if time.monotonic() >= deadline:
                raise ServerError(f"Triton at {self.address}: model {self.name!r} is not ready "
                                  f"(state {states.get(self.name, 'UNKNOWN')}).")
            time.sleep(POLL_S)

    def _index(self, client) -> tuple[set[str], dict[str, str]]:
        try:
            entries = repository_index(client, self.address, self.headers)
        except ServerError:
            return set(), {}
        return {e["name"] for e in entries}, {e["name"]: e["state"] for e in entries}

    def _probe_shm(self, client) -> bool:
        """Shared memory only on this host, and only if the server accepts a registration."""
        if not self.address.is_local or self.options.shared_memory is False:
            return False
        try:
            probe = _ShmSlot(client, 64, 64, self.headers)
        except Exception as exc:
            if self.options.shared_memory:
                log.warning("Triton at %s refused shared memory (%s); using the network", self.address, _reason(exc))
            else:
                log.info("shared memory not available with %s (%s); using the network", self.address, _reason(exc))
            return False
        probe.close(client, self.headers)
        return True

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._workers.call(self._predict, batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self._closing:   # queued by an engine thread that was abandoned (Ctrl-C, an error)
            raise ServerError(f"Triton at {self.address}: model {self.name!r} was closed.")
        batch = np.ascontiguousarray(batch, dtype=self.input.dtype)
        if self.max_batch_size == 0:
            return np.stack([self._infer_retrying(item, batched=False) for item in batch])
        per_item = batch[0].nbytes if len(batch) else 1
        step = len(batch)
        if self.address.protocol == "http" and not self.use_shm:
            step = max(1, min(step, HTTP_MAX_REQUEST_BYTES // max(per_item, 1)))
        if self.max_batch_size > 0:
            step = min(step, self.max_batch_size)
        if step >= len(batch):
            return self._infer_retrying(batch, batched=True)
        return np.concatenate([self._infer_retrying(batch[i:i + step], batched=True) for i in range(0, len(batch), step)])

    def _infer_retrying(self, array: np.ndarray, *, batched: bool) -> np.ndarray:
        for attempt in itertools.count():
            try:
                return self._infer(array, batched)
            except ServerError as exc:
                cause = exc.__cause__ or exc
                if attempt >= self.options.retries or not _is_retryable(cause):
                    raise
                delay = 0.5 * 2 ** attempt
                log.warning("%s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                self._reset_client()
                self._drop_slots()  # a restarted server knows none of our shared-memory regions
        raise AssertionError("unreachable")

    def _reset_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _drop_slots(self) -> None:
        """Forget every slot: idle ones are closed now, busy ones when their request returns."""
        with self._lock:
            self._generation += 1
        client = self._client()
        while True:
            try:
                slot = self._slots.get_nowait()
            except queue.Empty:
                break
            self._forget(slot, client)

    def _forget(self, slot: _ShmSlot, client) -> None:
        slot.close(client, self.headers)
        with self._lock:
            if slot in self._all_slots:
                self._all_slots.remove(slot)

    def _release_slot(self, slot: _ShmSlot) -> None:
        if slot.generation == self._generation:
            self._slots.put(slot)
        else:
            self._forget(slot, self._client())

    def _output_shape(self, array: np.ndarray, batched: bool) -> tuple[int, ...] | None:
        item_in = array.shape[1:] if batched else array.shape
        dims = self.output.dims
        shape = []
        for i, d in enumerate(dims):
            if d > 0:
                shape.append(d)
            elif len(dims) == len(item_in) and i > 0:
                shape.append(item_in[i])   # spatial sizes follow the input's (a scanning-window model)
            else:
                return None
        return ((array.shape[0],) if batched else ()) + tuple(shape)

    def _infer(self, array: np.ndarray, batched: bool) -> np.ndarray:
        client = self._client()
        module = self._module()
        infer_input = module.InferInput(self.input.name, list(array.shape), self.input.datatype)
        out_shape = self._output_shape(array, batched)
        slot = None
        try:
            if self.use_shm and out_shape is not None:
                out_bytes = int(np.prod(out_shape)) * self.output.dtype.itemsize
                try:
                    slot = self._acquire_slot(client, array.nbytes, out_bytes)
                except Exception as exc:
                    raise ServerError(f"Triton at {self.address}: cannot register shared memory "
                                      f"({_reason(exc)}).") from exc
                import tritonclient.utils.shared_memory as shm

                shm.set_shared_memory_region(slot.handles[0], [array])
                infer_input.set_shared_memory(slot.names[0], array.nbytes)
                requested = module.InferRequestedOutput(self.output.name)
                requested.set_shared_memory(slot.names[1], out_bytes)
            else:
                if self.address.protocol == "http":
                    infer_input.set_data_from_numpy(array, binary_data=True)
                    requested = module.InferRequestedOutput(self.output.name, binary_data=True)
                else:
                    infer_input.set_data_from_numpy(array)
                    requested = module.InferRequestedOutput(self.output.name)
            result = self._call(client, infer_input, requested)
            if slot is not None:
                import tritonclient.utils.shared_memory as shm

                return np.array(shm.get_contents_as_numpy(slot.handles[1], self.output.dtype, out_shape))
            output = result.as_numpy(self.output.name)
            if output is None:
                raise ModelMismatchError(f"Triton at {self.address}: model {self.name!r} returned no output "
                                         f"{self.output.name!r}.")
            return output
        finally:
            if slot is not None:
                self._release_slot(slot)

    def _call(self, client, infer_input, requested):
        headers = self.headers
        try:
            if self.address.protocol == "grpc":
                return client.infer(self.name, [infer_input], model_version=self.version, outputs=[requested],
                                    client_timeout=self.timeout_s, headers=headers)
            import gevent

            # a hard deadline: geventhttpclient's network timeout does not cover every wait (a
            # request to a model being unloaded was seen to hang for good without it)
            with gevent.Timeout(self.timeout_s, TimeoutError(f"timed out after {self.timeout_s:.0f} s")):
                return client.infer(self.name, [infer_input], model_version=self.version, outputs=[requested],
                                    headers=headers)
        except Exception as exc:
            reason = _reason(exc)
            lowered = reason.lower()
            if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
                raise ServerError(f"Triton at {self.address}: model {self.name!r} did not answer within "
                                  f"{self.timeout_s:.0f} s.") from exc
            if _is_connection_error(exc):
                raise ServerError(f"Triton at {self.address}: lost the connection during inference ({reason}).") from exc
            raise ServerError(f"Triton at {self.address}: model {self.name!r} failed ({reason}).") from exc

    def _module(self):
        if self.address.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _acquire_slot(self, client, in_bytes: int, out_bytes: int) -> _ShmSlot:
        while True:
            try:
                slot = self._slots.get_nowait()
            except queue.Empty:
                slot = None
            if slot is None:
                slot = _ShmSlot(client, in_bytes, out_bytes, self.headers)
                with self._lock:
                    slot.generation = self._generation
                    self._all_slots.append(slot)
                return slot
            if slot.generation == self._generation and slot.sizes[0] >= in_bytes and slot.sizes[1] >= out_bytes:
                return slot
            self._forget(slot, client)

    def close(self) -> None:
        """End the model's threads (each closes its client and its gevent hub once its current
        request returns; requests still queued are refused), then unregister and unlink the
        shared memory, which no thread uses any more. Stopped by a signal: a request in flight is
        not waited for (0.2 s), and the regions are only unlinked (no calls to a server about to be killed)."""
        self._closing = True
        stopping = stop_requested()
        idle = self._workers.close(timeout_s=0.2 if stopping else self.timeout_s)
        with self._lock:
            slots, self._all_slots = self._all_slots, []
        if slots and idle and not stopping:
            def release(client) -> None:
                for slot in slots:
                    slot.close(client, self.headers)
            try:
                with_client(self.address, self.options, min(self.timeout_s, 10.0), release)
            except Exception:
                for slot in slots:   # the server is gone: unlink at least
                    slot.close()
        elif slots:   # stopping, or a request stuck on a slot: unlink the names, keep the mappings
            for slot in slots:
                slot.unlink()
        self._finalizer.detach()


def check_same_model(expected: ModelSpec, served: ModelSpec, address: Address) -> None:
    """The model loader's ``config.pbtxt`` must describe the model the server runs."""
    def signature(spec: ModelSpec) -> dict:
        return {"name": spec.name, "max_batch_size": spec.max_batch_size,
                "inputs": [t.describe() for t in spec.inputs], "outputs": [t.describe() for t in spec.outputs]}

    mine, theirs = signature(expected), signature(served)
    for key in mine:
        if mine[key] != theirs[key]:
            raise ModelMismatchError(
                f"{expected.path}: {key} is {json.dumps(mine[key])}, the model on Triton at {address} has "
                f"{json.dumps(theirs[key])}.")


@atexit.register
def cleanup_all_regions() -> None:
    for slot in list(_REGIONS):
        slot.close()  # unlink only: the server drops its mapping when it sees the region gone or stops

