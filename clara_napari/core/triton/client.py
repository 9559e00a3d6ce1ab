"""tritonclient clients for an :class:`~.address.Address`: creation (TLS), readiness, the model
repository index, a served model's config, and the key header of this process's embedded server."""
from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ServerError
from ..model_repository import ModelSpec, spec_from_proto
from .address import Address, TransportOptions
from .errors import (
    RequestRefused,
    ServerUnavailable,
    client_errors,
    error_type,
    reason,
    server_error,
)
from .keys import server_headers
from .threads import ClientThreads, destroy_gevent_hub

POLL_S = 0.5
T = TypeVar("T")
_PROBE_ERRORS = (OSError, ValueError, http.client.HTTPException)


def with_server_key(address: Address, headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` plus the key of this process's embedded server at ``address`` (if it is one)."""
    merged = {**server_headers(address.host, address.port), **(headers or {})}
    return merged or None


def make_client(address: Address, options: TransportOptions, timeout_s: float) -> Any:
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

            kwargs: dict[str, Any] = {}
            if address.tls:
                kwargs = {"ssl": True, "root_certificates": options.ssl_ca, "private_key": options.ssl_key,
                          "certificate_chain": options.ssl_cert}
            return tgrpc.InferenceServerClient(address.url, **kwargs)
        import tritonclient.http as thttp

        kwargs = {"connection_timeout": min(timeout_s, 60.0), "network_timeout": timeout_s}
        if address.tls:
            import gevent.ssl

            ssl_options: dict[str, Any] = {}
            if options.ssl_ca:
                ssl_options["ca_certs"] = options.ssl_ca
            if options.ssl_cert:
                ssl_options.update(certfile=options.ssl_cert, keyfile=options.ssl_key)
            kwargs.update(ssl=True, ssl_options=ssl_options, ssl_context_factory=gevent.ssl.create_default_context,
                          insecure=False)
        return thttp.InferenceServerClient(address.url, **kwargs)
    except Exception as exc:   # a bad certificate, an unusable address: whatever the client library raises
        raise ServerError(f"Triton at {address}: cannot create a client ({reason(exc)}).") from exc


def close_client(client: Any) -> None:
    """Close a client, best effort (its server may be gone)."""
    if client is not None:
        with contextlib.suppress(*client_errors(), RuntimeError):
            client.close()


def with_client(address: Address, options: TransportOptions, timeout_s: float, fn: Callable[[Any], T]) -> T:
    """``fn(client)`` with a fresh client on a short-lived thread of its own; the client and that
    thread's gevent hub are closed afterwards (a hub left behind holds descriptors for good)."""
    def job() -> T:
        client = make_client(address, options, timeout_s)
        try:
            return fn(client)
        finally:
            close_client(client)

    workers = ClientThreads(1, name="clara-triton-once", on_exit=destroy_gevent_hub)
    try:
        return workers.call(job)
    finally:
        workers.close()


def close_thread_client(local: threading.local) -> None:
    """On a model's worker thread as it ends: close its client and its gevent hub."""
    client = getattr(local, "client", None)
    local.client = None
    close_client(client)
    destroy_gevent_hub()


def wait_ready(client: Any, address: Address, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll readiness every 0.5 s (as the original operator did) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = ""
    checked_v1 = False
    while True:
        try:
            if client.is_server_ready(headers=headers):
                return
            last = "the server is not ready"
        except client_errors() as exc:
            last = reason(exc)
            if issubclass(error_type(exc), RequestRefused):
                raise RequestRefused(f"Triton at {address} refused the request ({last}); pass the header it "
                                     "expects with --header KEY=VALUE.") from None
        if address.protocol == "http" and not checked_v1:
            status, body = http_probe(address, headers)
            checked_v1 = status is not None
            if status in (401, 403):
                raise RequestRefused(f"Triton at {address} refused the request ({body or status}); pass the header "
                                     "it expects with --header KEY=VALUE.")
            if checked_v1 and speaks_v1(address):
                raise ServerError(f"Triton at {address} speaks the TRTIS v1 API (/api/status); clara-napari needs the "
                                  "KServe v2 protocol of Triton 20.x or newer.")
        if time.monotonic() >= deadline:
            raise ServerUnavailable(f"Triton at {address} was not ready within {timeout_s:.0f} s ({last}).")
        time.sleep(POLL_S)


def http_probe(address: Address, headers: dict[str, str] | None) -> tuple[int | None, str]:
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
    except _PROBE_ERRORS:
        return None, ""


def speaks_v1(address: Address) -> bool:
    """Whether ``address`` is a TRTIS v1 server (no ``/v2`` health, but ``/api/status``)."""
    scheme = "https" if address.tls else "http"
    try:
        urllib.request.urlopen(f"{scheme}://{address.url}/v2/health/ready", timeout=2).close()
        return False
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return False
    except _PROBE_ERRORS:
        return False
    for path in ("/api/status", "/api/health/ready"):
        with contextlib.suppress(*_PROBE_ERRORS):
            urllib.request.urlopen(f"{scheme}://{address.url}{path}", timeout=2).close()
            return True
    return False


def server_model_spec(client: Any, address: Address, name: str, version: str = "",
                      headers: dict[str, str] | None = None) -> ModelSpec:
    """The served model's config as a :class:`ModelSpec` (HTTP's JSON or gRPC's message)."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        config = client.get_model_config(name, version, headers=headers)
    except client_errors() as exc:
        raise server_error(exc, f"Triton at {address}: cannot read the config of model {name!r} "
                                f"({reason(exc)}).") from None
    if isinstance(config, dict):  # HTTP: the JSON form
        message = json_format.ParseDict(config, mc.ModelConfig(), ignore_unknown_fields=True)
    else:
        message = config.config
    return spec_from_proto(message)


def repository_index(client: Any, address: Address, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The server's model repository index as ``[{"name", "version", "state"}]`` (HTTP or gRPC)."""
    try:
        index = client.get_model_repository_index(headers=headers)
    except client_errors() as exc:
        raise server_error(exc, f"Triton at {address}: cannot list the models ({reason(exc)}).") from None
    entries = index if isinstance(index, list) else [
        {"name": m.name, "version": m.version, "state": m.state} for m in index.models]
    return [{"name": str(e.get("name") or ""), "version": str(e.get("version") or ""),
             "state": str(e.get("state") or "UNKNOWN")} for e in entries if e.get("name")]
