"""Typed Triton errors, and the ONE function that maps a client exception to them.

:func:`error_type` reads the status code first (tritonclient's ``InferenceServerException.status()``
is ``"StatusCode.<NAME>"`` for gRPC and the HTTP status for HTTP; a raw ``grpc.RpcError`` has
``code()``), then the exception's type (``OSError``/``ConnectionError``/``TimeoutError``,
geventhttpclient's ``HTTPException``, ``gevent.Timeout``). Retries and fail-over are keyed on the
types (``isinstance(exc, RETRYABLE)``), never on message text.

What Triton 2.51 (the embedded server) and tritonclient answer, measured (see
tests/unit/test_triton_transport.py): connection refused → HTTP ``ConnectionRefusedError``, gRPC
``UNAVAILABLE``; a restricted API without its key → HTTP ``403``, gRPC ``UNAVAILABLE`` (!); an
unknown model or version → ``404`` / ``NOT_FOUND``; a model being unloaded or not yet loaded →
``404`` / ``NOT_FOUND`` too ("has no available versions"); a shared-memory region the server does
not know (it restarted) → ``404`` / ``NOT_FOUND`` too; a gRPC deadline → ``DEADLINE_EXCEEDED``;
an HTTP time-out → ``TimeoutError``. Where one code covers cases that need different handling,
the text tells them apart, inside :func:`error_type` only.
"""
from __future__ import annotations

import http.client
import sys

from ..errors import ServerError


class ServerUnavailable(ServerError):
    """The server cannot be reached or went away (refused, reset, closed, UNAVAILABLE)."""


class ServerTimeout(ServerError):
    """The server did not answer in time (deadline exceeded, a client time-out)."""


class RequestRefused(ServerError):
    """The server refused the request: 401/403, PERMISSION_DENIED, UNAUTHENTICATED, a restricted API."""


class ModelNotFound(ServerError):
    """The server has no such model or version."""


class ModelNotReady(ServerError):
    """The model is known but not (or no longer) ready: loading, unloading, a server shutting down."""


class SharedMemoryLost(ServerError):
    """The server does not know a shared-memory region we registered (it restarted)."""


#: worth another try after a pause (a restarted server, a model coming back, our regions to register again)
RETRYABLE: tuple[type[ServerError], ...] = (ServerUnavailable, ModelNotReady, SharedMemoryLost)
#: an endpoint problem rather than a problem of the request: a fleet sends the batch elsewhere
ENDPOINT_FAILURES: tuple[type[ServerError], ...] = (*RETRYABLE, ServerTimeout)

_TIMEOUT_CODES = {"DEADLINE_EXCEEDED", "408", "504"}
_REFUSED_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED", "401", "403"}
_UNAVAILABLE_CODES = {"UNAVAILABLE", "502", "503", "ABORTED"}
_NOT_FOUND_CODES = {"NOT_FOUND", "404"}
_REQUEST_CODES = {"INVALID_ARGUMENT", "400", "INTERNAL", "500", "FAILED_PRECONDITION"}
#: exceptions without any status code (tritonclient raises some on the client side) that mean a
#: lost connection; only their text says so
_CONNECTION_WORDS = ("connection refused", "connection reset", "failed to connect", "broken pipe",
                     "socket closed", "connect failed", "remote end closed", "server disconnected",
                     "eof occurred", "connection closed")


def reason(exc: BaseException) -> str:
    """The exception's message on one line, at most 300 characters (its type's name if empty)."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    message = " ".join(str(message).split())
    return message[:300] or type(exc).__name__


def status_code(exc: BaseException) -> str | None:
    """The status of a tritonclient or grpc exception: a gRPC code's name (``"UNAVAILABLE"``) or
    an HTTP status (``"403"``); None when it carries none."""
    status = None
    status_of, code_of = getattr(exc, "status", None), getattr(exc, "code", None)
    if callable(status_of):     # tritonclient's InferenceServerException
        status = status_of()
    elif callable(code_of):     # grpc.RpcError: a grpc.StatusCode
        code = code_of()
        status = getattr(code, "name", code)
    if status is None or status == "":
        return None
    return str(status).removeprefix("StatusCode.").upper()


def _is_gevent_timeout(exc: BaseException) -> bool:
    gevent = sys.modules.get("gevent")   # only raised where gevent is in use already
    return gevent is not None and isinstance(exc, gevent.Timeout)


def error_type(exc: BaseException) -> type[ServerError]:
    """The typed error for a tritonclient/grpc/socket exception (``ServerError`` when none fits)."""
    if isinstance(exc, ServerError):
        return type(exc)
    if isinstance(exc, TimeoutError) or _is_gevent_timeout(exc):   # TimeoutError is an OSError: first
        return ServerTimeout
    if isinstance(exc, (OSError, http.client.HTTPException)):   # refused, reset, closed mid-response
        return ServerUnavailable
    code = status_code(exc)
    text = reason(exc).lower()
    if code is None:
        return ServerUnavailable if any(word in text for word in _CONNECTION_WORDS) else ServerError
    if code in _TIMEOUT_CODES:
        return ServerTimeout
    if code in _REFUSED_CODES:
        return RequestRefused
    if code in _UNAVAILABLE_CODES:
        # Triton 2.51 answers a restricted gRPC protocol with UNAVAILABLE; only its text differs
        return RequestRefused if "restricted" in text else ServerUnavailable
    if code in _NOT_FOUND_CODES or code in _REQUEST_CODES:
        # one code for an unknown shared-memory region, a model not loaded yet or being unloaded,
        # and a model that does not exist: Triton's text is all that tells them apart
        if "shared memory region" in text:
            return SharedMemoryLost
        if "no available versions" in text or "is not ready" in text:
            return ModelNotReady
        if code in _NOT_FOUND_CODES:
            return ModelNotFound
    return ServerError


def server_error(exc: BaseException, message: str) -> ServerError:
    """``message`` as the typed error for ``exc`` (raise it ``from exc`` or ``from None``)."""
    return error_type(exc)(message)


def client_errors() -> tuple[type[BaseException], ...]:
    """What a tritonclient call raises when the server or the network fails (for ``except``)."""
    from tritonclient.utils import InferenceServerException

    types: list[type[BaseException]] = [InferenceServerException, OSError, http.client.HTTPException]
    for module, name in (("grpc", "RpcError"), ("gevent", "Timeout")):   # only where already in use
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)
