"""``clara-napari serve``: the embedded Triton server until Ctrl-C."""
from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the embedded Triton server until Ctrl-C")
    serve.add_argument("--models", help="model repository (default: the bundled sample_data/models)")
    serve.add_argument("--http-port", type=int, default=0)
    serve.add_argument("--grpc-port", type=int, default=0)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default loopback); any other needs --tls-cert/--tls-key "
                            "or --insecure")
    serve.add_argument("--tls-cert", help="server certificate (PEM) for gRPC over TLS; HTTP then stays on loopback")
    serve.add_argument("--tls-key", help="its private key (PEM)")
    serve.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to (mutual TLS)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host without TLS (anyone who reaches it sees the data)")
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..core.apps import bundled_model_repository
    from ..core.serve_policy import exposure_lines, serve_options
    from ..core.triton.embedded import EmbeddedServer

    repository = Path(args.models) if args.models else bundled_model_repository()
    options = serve_options(args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                            insecure=args.insecure)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    with EmbeddedServer(repository, http_port=args.http_port, grpc_port=args.grpc_port, **options) as server:
        print(f"Triton {server.version} serving {repository}")
        print("\n".join(exposure_lines(server, server.write_key_file())))
        print("Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):   # Ctrl-C or SIGTERM: the server stops on leaving
            server.wait()
    return 0
