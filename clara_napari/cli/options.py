"""Options shared by the sub-commands: a server's address and transport (``run``, ``models``), and the
request headers and TLS files of any HTTP peer (a Triton server; with a prefix, the PACS of
:mod:`.dicom`)."""
from __future__ import annotations

import argparse
import os

from ..core.masking import parse_header_items


def add_header_and_tls_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, prefix: str = "",
                            header_help: str, ca_help: str) -> None:
    """``--[prefix]header KEY=VALUE`` (repeatable), ``--[prefix]ssl-ca``, ``--[prefix]ssl-cert`` and
    ``--[prefix]ssl-key``: the same four options for a Triton server and for a PACS (``prefix="pacs-"``)."""
    parser.add_argument(f"--{prefix}header", action="append", default=[], metavar="KEY=VALUE", help=header_help)
    parser.add_argument(f"--{prefix}ssl-ca", help=ca_help)
    parser.add_argument(f"--{prefix}ssl-cert", help=f"client certificate file (with --{prefix}ssl-key)")
    parser.add_argument(f"--{prefix}ssl-key", help=f"client private key file (with --{prefix}ssl-cert)")


def named_servers(servers: str | list[str] | None):
    """``--server`` given once: that server; several times: the list (a fleet); never: None (the
    choice is then :func:`clara_napari.core.session.choose_server`'s, as for every entry point)."""
    if not servers or isinstance(servers, str):
        return servers or None
    return servers[0] if len(servers) == 1 else list(servers)


def add_server_args(parser: argparse.ArgumentParser, repeatable: bool = False) -> None:
    parser.add_argument("--server", action="append" if repeatable else "store",
                        help="'local' (the model runs in process), 'embedded' (a Triton server started here), "
                        "a Triton address (host:port or URL, "
                        "grpc://host:port for gRPC); default ('auto'): $NVIDIA_CLARA_TRTISURI, else the app's inferer "
                        "args, else an embedded Triton server" + ("; repeat it to spread the windows over several "
                                                            "servers (docs/scale.md)" if repeatable else ""))
    parser.add_argument("--protocol", choices=["http", "grpc"], help="protocol for --server host:port")
    parser.add_argument("--no-shm", action="store_true", help="never use system shared memory with Triton")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a server or a request")
    parser.add_argument("--threads", type=int, default=None, help="model runtime threads (local and embedded)")
    parser.add_argument("--runtime", choices=["openvino", "onnxruntime", "torch"], default=None,
                        help="what runs the model locally and in the embedded server (default: openvino for ONNX "
                             "where installed, else onnxruntime; torch for TorchScript)")
    parser.add_argument("--retries", type=int, default=None, help="retries after a lost connection (default 2)")
    parser.add_argument("--ready-timeout", type=float, default=None,
                        help="seconds to wait for the server and model to be ready (default 60)")
    add_header_and_tls_args(parser, header_help="extra request header (e.g. an auth token), repeatable; "
                                                "also from $CLARA_NAPARI_HEADERS (KEY=VALUE;KEY=VALUE)",
                            ca_help="CA certificate file for https:// and grpcs:// servers")


def parse_headers(items: list[str], env: str = "CLARA_NAPARI_HEADERS") -> dict[str, str]:
    """``KEY=VALUE`` items (and ``$CLARA_NAPARI_HEADERS``, or ``env``) → a header dict (values masked from now on)."""
    env_items = [p for p in os.environ.get(env, "").split(";") if p.strip()]
    headers = parse_header_items(env_items, f"${env} item")
    headers.update(parse_header_items(list(items), "--header"))
    return headers


def server_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "protocol", None):
        options["protocol"] = args.protocol
    if getattr(args, "no_shm", False):
        options["shared_memory"] = False
    if getattr(args, "timeout", None):
        options["timeout_s"] = args.timeout
    if getattr(args, "runtime", None):
        options["runtime"] = args.runtime
    if getattr(args, "retries", None) is not None:
        options["retries"] = args.retries
    if getattr(args, "ready_timeout", None):
        options["ready_timeout_s"] = args.ready_timeout
    headers = parse_headers(getattr(args, "header", []) or [])
    if headers:
        options["headers"] = headers
    for name in ("ssl_ca", "ssl_cert", "ssl_key"):
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    return options
