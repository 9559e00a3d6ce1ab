"""What ``clara-napari serve`` may expose, and the lines that say what it exposes.

Loopback needs nothing more. Any other address needs TLS (Triton offers it for gRPC only, so HTTP
then stays on loopback) or an explicit ``--insecure``. Whatever the address, the APIs that load
code, register shared memory or change trace/log settings need the per-start key
(:data:`~clara_napari.core.triton.embedded.SERVE_RESTRICTED`), which is written to an owner-only file for the
user who started the server; inference, metadata, model configs and health are open to clients.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from .errors import ServerError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_options(host: str, *, tls_cert: str | None = None, tls_key: str | None = None, tls_ca: str | None = None,
                  insecure: bool = False) -> dict:
    """:class:`~clara_napari.core.triton.embedded.EmbeddedServer` keywords for ``serve --host host``; refuses
    a non-loopback address without TLS or ``--insecure`` (one sentence)."""
    from .triton.embedded import SERVE_RESTRICTED

    options: dict = {"host": host, "restricted": SERVE_RESTRICTED}
    if bool(tls_cert) != bool(tls_key):
        raise ServerError("serve: --tls-cert and --tls-key go together.")
    if tls_ca and not tls_cert:
        raise ServerError("serve: --tls-ca (client certificates) needs --tls-cert and --tls-key.")
    for name, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-ca", tls_ca)):
        if value and not Path(value).is_file():
            raise ServerError(f"serve: {name} {value}: no such file.")
    if tls_cert and tls_key:   # both or neither (checked above)
        options["grpc_tls"] = {"cert": str(Path(tls_cert).resolve()), "key": str(Path(tls_key).resolve())}
        if tls_ca:
            options["grpc_tls"]["root"] = str(Path(tls_ca).resolve())
    if is_loopback(host):
        return options
    if tls_cert and not insecure:
        options["http_host"] = "127.0.0.1"   # Triton's HTTP has no TLS: it stays on this machine
        return options
    if not insecure:
        raise ServerError(f"serve --host {host}: a non-loopback address needs TLS (--tls-cert and --tls-key, "
                          "gRPC only) or an explicit --insecure.")
    return options


def exposure_lines(server, key_file: Path | None) -> list[str]:
    """What a running ``serve`` exposes, one line per listener, then who may do what."""
    from .triton.keys import GRPC_KEY_HEADER, KEY_HEADER

    def scope(host: str) -> str:
        return "this machine only" if is_loopback(host) else (
            "EVERY interface" if host in ("0.0.0.0", "::") else f"the network at {host}")

    grpc_how = ("TLS" + (" with client certificates" if server.grpc_tls and server.grpc_tls.get("root") else "")
                if server.grpc_tls else "no TLS")
    lines = [f"  HTTP    {server.http_url}  ({scope(server.http_host)}, no TLS)",
             f"  gRPC    {server.grpc_url}  ({scope(server.host)}, {grpc_how})",
             "  metrics off",
             f"  models  {', '.join(server.model_names())} (loaded at start; nothing can be loaded or unloaded)",
             "  open to any client: health, metadata, model config, inference",
             f"  need the key (header {KEY_HEADER}; gRPC {GRPC_KEY_HEADER}): " + ", ".join(server.restricted)]
    if key_file is not None:
        lines.append(f"  key     in {key_file} (owner-only)")
    if not is_loopback(server.host) and not server.grpc_tls:
        lines.append(f"WARNING: --insecure: anyone who can reach {server.host} can send and read patient data "
                     "in clear text.")
    return lines
