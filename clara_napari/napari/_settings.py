"""Widget settings (server, app, ...) kept between sessions in a small JSON file.

The file is ``$CLARA_NAPARI_CONFIG_DIR/napari_widget.json``, else
``$XDG_CONFIG_HOME/clara-napari/napari_widget.json`` (``~/.config/clara-napari/...``). Unreadable or
malformed files are ignored (defaults are used), and saving never raises.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "napari_widget.json"
DEFAULTS: dict[str, Any] = {"server": "auto", "protocol": "HTTP", "app": "", "app_file": "", "export_dir": "",
                            "rerun": "new layer", "probabilities": "no"}


def config_dir() -> Path:
    explicit = os.environ.get("CLARA_NAPARI_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "clara-napari"


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def load_settings() -> dict[str, Any]:
    values = dict(DEFAULTS)
    try:
        stored = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return values
    if isinstance(stored, dict):
        values.update({k: v for k, v in stored.items() if k in DEFAULTS and isinstance(v, str)})
    return values


def save_settings(values: dict[str, Any]) -> None:
    path = settings_path()
    data = {k: str(values[k]) for k in DEFAULTS if k in values and values[k] is not None}
    if "server" in data:   # credentials in a server URL (user:pass@) are never written to disk
        from ..core.masking import split_userinfo

        data["server"] = split_userinfo(data["server"])[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:  # settings are a convenience: never fail the widget over them
        log.warning("cannot save the widget settings to %s: %s", path, exc)
