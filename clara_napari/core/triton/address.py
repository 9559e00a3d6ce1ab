"""Where a Triton server is and how to talk to it: :class:`Address`, :class:`TransportOptions`."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..errors import ServerError
from ..masking import mask, remember, split_userinfo

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}
_SCHEMES = {"http": "http", "https": "http", "grpc": "grpc", "grpcs": "grpc"}


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
        if scheme not in _SCHEMES:
            raise ServerError(f"{text}: unknown scheme {scheme!r} (use http, https, grpc or grpcs).")
    raw = raw.rstrip("/")
    host, sep, port_text = raw.rpartition(":")
    if sep and not host:   # ":8000": a port and no host
        raise ServerError(f"{text}: no host in the server address.")
    if not sep:
        host, port_text = raw, ""
    proto = _SCHEMES.get(scheme, (protocol or "http").lower())
    if not port_text:
        port = 8001 if proto == "grpc" else 8000
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ServerError(f"{text}: the port {port_text!r} is not a number between 1 and 65535.")
    if not host:
        raise ServerError(f"{text}: no host in the server address.")
    return Address(host=host, port=port, protocol=proto, tls=scheme in ("https", "grpcs"), userinfo=userinfo)


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


def request_headers(options: TransportOptions, address: Address) -> dict[str, str] | None:
    """The headers sent with every call: the options' headers, plus basic auth from the URL's
    ``user:pass@`` (unless an Authorization header is given)."""
    headers = dict(options.headers or {})
    if address.userinfo and not any(k.lower() == "authorization" for k in headers):
        token = base64.b64encode(address.userinfo.encode("utf-8")).decode("ascii")
        remember(token)
        headers["Authorization"] = f"Basic {token}"
    return headers or None
