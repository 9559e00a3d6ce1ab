"""``clara-napari apps`` (the bundled apps) and ``clara-napari new-app`` (scaffold an app folder)."""
from __future__ import annotations

import argparse

from ..core.errors import ClaraNapariError


def add_parsers(sub) -> None:
    apps = sub.add_parser("apps", help="list the bundled apps")
    apps.add_argument("--json", action="store_true")
    apps.set_defaults(handler=cmd_apps)

    new_app = sub.add_parser("new-app", help="scaffold an app folder from a bundled app")
    new_app.add_argument("folder", help="the new app folder")
    new_app.add_argument("--from", dest="source", default="brain_extraction_t1", help="app to start from")
    new_app.add_argument("--force", action="store_true", help="write into a non-empty folder")
    new_app.set_defaults(handler=cmd_new_app)


def cmd_apps(args: argparse.Namespace) -> int:
    import json

    from ..core.apps import list_apps

    rows = []
    for app in list_apps():
        try:
            config = app.config
            rows.append({"name": app.name, "folder": str(app.folder), "model": config.model_name,
                         "labels": {str(k): v for k, v in config.label_names().items()}})
        except ClaraNapariError as exc:
            rows.append({"name": app.name, "folder": str(app.folder), "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            labels = ", ".join(f"{k}={v}" for k, v in row.get("labels", {}).items())
            print(f"{row['name']:<24} model {row.get('model', '?'):<24} labels {labels or '-'}  ({row['folder']})")
    return 0


def cmd_new_app(args: argparse.Namespace) -> int:
    from ..core.apps import scaffold_app

    app = scaffold_app(args.folder, args.source, force=args.force)
    print(f"created app {app.folder} from {args.source}; run it with: clara-napari run --app {app.folder}")
    return 0
