"""The per-start key of this process's embedded servers, and keys handed over by another process.

The embedded server restricts its APIs to requests carrying a key drawn at each start; only this
process knows it (:func:`server_headers` gives it to this process's own clients) and those it was
handed to on purpose (:func:`share_server_key`). The key is never in the environment, a command
line or a log.
"""
from __future__ import annotations

import weakref
from typing import Any

from .address import parse_address

#: the header carrying the per-start key (gRPC metadata needs Triton's prefix)
KEY_HEADER = "clara-napari-key"
GRPC_KEY_HEADER = "triton-grpc-protocol-" + KEY_HEADER

#: this process's running embedded servers (:class:`~.embedded.EmbeddedServer` adds itself)
LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
#: keys of embedded servers that another process of this user started and handed over on purpose
#: (Dask workers sharing their machine's server): (host, port) → (protocol, key)
_SHARED_KEYS: dict[tuple[str, int], tuple[str, str]] = {}
_LOOPBACK = {"127.0.0.1", "localhost"}


def key_headers(protocol: str, key: str) -> dict[str, str]:
    """The header that opens the restricted APIs (gRPC metadata keys carry Triton's prefix)."""
    return {GRPC_KEY_HEADER if protocol == "grpc" else KEY_HEADER: key} if key else {}


def share_server_key(url: str, key: str) -> None:
    """Let this process's clients open the restricted APIs of the embedded server at ``url``, started
    by another process of this user that handed its key over (never through the environment or a
    command line: a Dask task's arguments on loopback, or an owner-only state file)."""
    address = parse_address(url)
    hosts = {address.host} | (_LOOPBACK if address.host in _LOOPBACK else set())
    for host in hosts:
        _SHARED_KEYS[(host, address.port)] = (address.protocol, key)


def server_headers(host: str, port: int) -> dict[str, str]:
    """The key header for an embedded server of this process listening at ``host:port`` ({} if none).

    Only this process's clients get it (and those it was handed to: :func:`share_server_key`); the
    key is never in the environment, a command line or a log.
    """
    for server in list(LIVE):
        if not server.key:   # set from start until the process is gone (it still answers while stopping)
            continue
        for protocol, bound in (("http", server.http_host), ("grpc", server.host)):
            names = {bound} | (_LOOPBACK if bound in ("127.0.0.1", "0.0.0.0") else set())
            if server.ports.get(protocol) == port and host in names:
                return server.auth_headers(protocol)
    if (host, port) in _SHARED_KEYS:
        protocol, key = _SHARED_KEYS[(host, port)]
        return key_headers(protocol, key)
    return {}
