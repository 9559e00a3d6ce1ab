"""``clara-napari models``: the models a server (or an app's repository) offers."""
from __future__ import annotations

import argparse

from ..core.masking import mask
from .options import add_server_args, named_servers, server_options


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list the models a server (or an app's repository) offers")
    add_server_args(models)
    models.add_argument("--app", help="app whose model repository the embedded server serves")
    models.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..core.apps import resolve_app
    from ..core.session import choose_server, open_backend

    app = resolve_app(args.app) if args.app else None
    transport = server_options(args)
    choice = choose_server(named_servers(args.server), inferer=app.config.inferer if app else None,
                           protocol=transport.get("protocol"))
    repository = app.model_repository if app else None
    backend = open_backend(choice, threads=args.threads, repository=repository, transport=transport)
    try:
        for row in backend.list_models(repository):
            print(mask(row))
    finally:
        backend.close()
    return 0
