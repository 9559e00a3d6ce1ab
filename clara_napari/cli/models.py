"""``clara-napari models``: the models a server (or an app's repository) offers."""
from __future__ import annotations

import argparse
import os

from ..core.masking import mask
from .options import add_server_args, server_options


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list the models a server (or an app's repository) offers")
    add_server_args(models)
    models.add_argument("--app", help="app whose model repository the embedded server serves")
    models.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..core.apps import resolve_app
    from ..core.backends import open_backend

    app = resolve_app(args.app) if args.app else None
    backend = open_backend(args.server or os.environ.get("NVIDIA_CLARA_TRTISURI"), threads=args.threads,
                           app=app, **server_options(args))
    try:
        for row in backend.list_models(app.model_repository if app else None):
            print(mask(row))
    finally:
        backend.close()
    return 0
