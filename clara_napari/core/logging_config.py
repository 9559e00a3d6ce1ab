"""An app's ``logging_config.json``, checked against a schema that can never name code.

``logging.config.dictConfig`` imports and calls whatever a config names (``"()"`` factories,
``class`` paths, ``ext://`` and ``cfg://`` conversions, filters), so an app folder handed to us
could run any command through it. Only this subset is accepted:

* top level: ``version`` (1), ``disable_existing_loggers``, ``incremental`` (false),
  ``formatters``, ``handlers``, ``loggers``, ``root``;
* a formatter: ``format``, ``datefmt``, ``style`` (``%``, ``{`` or ``$``) and ``validate``; a
  format string may name record fields only (no ``{x.attr}`` or ``{x[key]}`` look-ups);
* a handler: ``class`` one of :data:`HANDLER_CLASSES` (stream and file handlers), ``level``,
  ``formatter``, ``stream`` (stdout or stderr), ``filename`` (inside the run's logs folder),
  ``mode`` (``a`` or ``w``), ``encoding``, ``delay``, and ``maxBytes``/``backupCount``/``when``/
  ``interval`` for the rotating ones;
* a logger (and ``root``): ``level``, ``handlers`` (names of handlers above), ``propagate``.

Everything else is refused with one :class:`ConfigError` naming the file and the JSON path. The
returned dict holds only plain values (streams as the objects themselves), so ``dictConfig``
never resolves a string into an import.
"""
from __future__ import annotations

import codecs
import json
import logging
import string
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

STREAMS = {"ext://sys.stdout": "stdout", "ext://sys.stderr": "stderr", "stdout": "stdout", "stderr": "stderr"}
#: the handler classes a config may name (no network, no process, no custom code)
HANDLER_CLASSES = {
    "logging.StreamHandler": (),
    "logging.FileHandler": ("filename", "mode", "encoding", "delay"),
    "logging.handlers.WatchedFileHandler": ("filename", "mode", "encoding", "delay"),
    "logging.handlers.RotatingFileHandler": ("filename", "mode", "encoding", "delay", "maxBytes", "backupCount"),
    "logging.handlers.TimedRotatingFileHandler": ("filename", "encoding", "delay", "when", "interval", "backupCount"),
}
TOP_KEYS = {"version", "disable_existing_loggers", "incremental", "formatters", "handlers", "loggers", "root"}
FORMATTER_KEYS = {"format", "datefmt", "style", "validate"}
LOGGER_KEYS = {"level", "handlers", "propagate"}
WHEN = {"S", "M", "H", "D", "MIDNIGHT", "W0", "W1", "W2", "W3", "W4", "W5", "W6"}
MAX_BYTES = 64 * 1024


def _fail(message: str, path: str, file: str) -> ConfigError:
    return ConfigError(message, path=path, file=file)


def _object(value: Any, path: str, file: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(f"must be a JSON object, got {type(value).__name__}.", path, file)
    return value


def _keys(value: dict, allowed: set[str] | tuple, path: str, file: str, what: str) -> None:
    for key in value:
        if key not in allowed:
            hint = " (a logging config may not name code: factories, classes, filters, ext:// or cfg:// values)" \
                if key in ("()", ".", "class", "filters", "filter", "target", "factory") or "." in key else ""
            raise _fail(f"{what} key {key!r} is not allowed{hint}; allowed: {', '.join(sorted(allowed))}.",
                        f"{path}.{key}" if path else key, file)


def _string(value: Any, path: str, file: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {type(value).__name__}.", path, file)
    if "ext://" in value or "cfg://" in value:
        raise _fail("ext:// and cfg:// values are not allowed (they import or look up code).", path, file)
    return value


def _bool(value: Any, path: str, file: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"must be true or false, got {value!r}.", path, file)
    return value


def _count(value: Any, path: str, file: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"must be a whole number >= 0, got {value!r}.", path, file)
    return value


def _level(value: Any, path: str, file: str) -> int | str:
    if isinstance(value, str) and value.upper() in logging.getLevelNamesMapping():
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    raise _fail(f"unknown level {value!r} (use DEBUG, INFO, WARNING, ERROR or CRITICAL).", path, file)


def _format(fmt: str, style: str, path: str, file: str) -> None:
    """Record fields only: ``{name}``/``%(name)s``/``$name``, never an attribute or item look-up."""
    if style == "{":
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
        except ValueError as exc:
            raise _fail(f"not a valid format string ({exc}).", path, file) from None
        for field in fields:
            if not field.isidentifier():
                raise _fail(f"format field {{{field}}} is not a plain record field.", path, file)
    elif style == "$":
        for _, _escaped, named, braced, invalid in string.Template.pattern.findall(fmt):
            name = named or braced
            if invalid or (name and not name.isidentifier()):
                raise _fail("format fields must be plain record fields ($name).", path, file)


def _formatter(value: Any, path: str, file: str) -> dict:
    value = _object(value, path, file)
    _keys(value, FORMATTER_KEYS, path, file, "formatter")
    out: dict[str, Any] = {}
    style = value.get("style", "%")
    if style not in ("%", "{", "$"):
        raise _fail(f"style must be '%', '{{' or '$', got {style!r}.", f"{path}.style", file)
    out["style"] = style
    for key in ("format", "datefmt"):
        if key in value:
            out[key] = _string(value[key], f"{path}.{key}", file)
    if "format" in out:
        _format(out["format"], style, f"{path}.format", file)
    if "validate" in value:
        out["validate"] = _bool(value["validate"], f"{path}.validate", file)
    return out


def _inside(folder: Path | None, name: str, path: str, file: str) -> str:
    if folder is None:
        raise _fail("a file handler needs the run's logs folder, and there is none.", path, file)
    root = Path(folder).resolve()
    target = (root / name).resolve()  # a relative name is taken inside the logs folder
    if target == root or root not in target.parents:
        raise _fail(f"the log file {name!r} is outside the logs folder {root}.", path, file)
    return str(target)


def _handler(value: Any, path: str, file: str, formatters: dict, logs: Path | None) -> dict:
    value = _object(value, path, file)
    _keys(value, {"class", "level", "formatter", "stream", *(k for ks in HANDLER_CLASSES.values() for k in ks)},
          path, file, "handler")
    cls = value.get("class")
    if cls not in HANDLER_CLASSES:
        raise _fail(f"handler class {cls!r} is not allowed; allowed: {', '.join(HANDLER_CLASSES)}.",
                    f"{path}.class", file)
    extra = HANDLER_CLASSES[cls]
    _keys(value, {"class", "level", "formatter", *(extra or ("stream",))}, path, file, "handler")
    out: dict[str, Any] = {"class": cls}
    if "level" in value:
        out["level"] = _level(value["level"], f"{path}.level", file)
    if "formatter" in value:
        name = _string(value["formatter"], f"{path}.formatter", file)
        if name not in formatters:
            raise _fail(f"no formatter {name!r} in formatters.", f"{path}.formatter", file)
        out["formatter"] = name
    if "stream" in value:
        stream = value["stream"]
        if stream not in STREAMS:
            raise _fail(f"stream must be ext://sys.stdout or ext://sys.stderr, got {stream!r}.", f"{path}.stream", file)
        out["stream"] = getattr(sys, STREAMS[stream])
    if extra:
        if "filename" not in value:
            raise _fail("a file handler needs a filename.", f"{path}.filename", file)
        out["filename"] = _inside(logs, _string(value["filename"], f"{path}.filename", file), f"{path}.filename", file)
        if "mode" in value:
            if value["mode"] not in ("a", "w"):
                raise _fail(f"mode must be 'a' or 'w', got {value['mode']!r}.", f"{path}.mode", file)
            out["mode"] = value["mode"]
        if "encoding" in value:
            encoding = _string(value["encoding"], f"{path}.encoding", file)
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise _fail(f"unknown encoding {encoding!r}.", f"{path}.encoding", file) from None
            out["encoding"] = encoding
        if "delay" in value:
            out["delay"] = _bool(value["delay"], f"{path}.delay", file)
        for key in ("maxBytes", "backupCount", "interval"):
            if key in value:
                out[key] = _count(value[key], f"{path}.{key}", file)
        if "when" in value:
            when = value["when"]
            if not isinstance(when, str) or when.upper() not in WHEN:
                raise _fail(f"when must be one of {', '.join(sorted(WHEN))}, got {when!r}.", f"{path}.when", file)
            out["when"] = when
    return out


def _logger(value: Any, path: str, file: str, handlers: dict) -> dict:
    value = _object(value, path, file)
    _keys(value, LOGGER_KEYS, path, file, "logger")
    out: dict[str, Any] = {}
    if "level" in value:
        out["level"] = _level(value["level"], f"{path}.level", file)
    if "propagate" in value:
        out["propagate"] = _bool(value["propagate"], f"{path}.propagate", file)
    if "handlers" in value:
        names = value["handlers"]
        if not isinstance(names, list):
            raise _fail("must be a list of handler names.", f"{path}.handlers", file)
        for i, name in enumerate(names):
            if not isinstance(name, str) or name not in handlers:
                raise _fail(f"no handler {name!r} in handlers.", f"{path}.handlers[{i}]", file)
        out["handlers"] = list(names)
    return out


def _section(raw: dict, key: str, file: str) -> dict:
    value = _object(raw.get(key, {}), key, file)
    for name in value:
        if not name.isprintable() or len(name) > 200:
            raise _fail("names must be printable and at most 200 characters.", key, file)
    return value


def check_logging_config(raw: Any, *, file: str = "", logs: Path | None = None) -> dict:
    """The config ``dictConfig`` may run: ``raw`` checked against the safe schema (see the module)."""
    raw = _object(raw, "", file) if isinstance(raw, dict) else None
    if raw is None:
        raise _fail("the top level must be a JSON object.", "", file)
    _keys(raw, TOP_KEYS, "", file, "top-level")
    if raw.get("version", 1) != 1 or isinstance(raw.get("version"), bool):
        raise _fail(f"must be 1, got {raw.get('version')!r}.", "version", file)
    out: dict[str, Any] = {"version": 1}
    if "disable_existing_loggers" in raw:
        out["disable_existing_loggers"] = _bool(raw["disable_existing_loggers"], "disable_existing_loggers", file)
    if raw.get("incremental", False) is not False:
        raise _fail("incremental configs are not supported (use false).", "incremental", file)
    formatters = {name: _formatter(v, f"formatters.{name}", file) for name, v in _section(raw, "formatters", file).items()}
    handlers = {name: _handler(v, f"handlers.{name}", file, formatters, logs)
                for name, v in _section(raw, "handlers", file).items()}
    loggers = {name: _logger(v, f"loggers.{name}", file, handlers) for name, v in _section(raw, "loggers", file).items()}
    out.update(formatters=formatters, handlers=handlers, loggers=loggers)
    if "root" in raw:
        out["root"] = _logger(raw["root"], "root", file, handlers)
    return out


def load_logging_config(path: str | Path, *, logs: Path | None = None, app_folder: Path | None = None) -> dict:
    """Read and check an app's ``logging_config.json`` (inside ``app_folder`` when given)."""
    path = Path(path)
    file = str(path)
    if app_folder is not None:
        from .apps import check_inside_app

        check_inside_app(path, app_folder)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _fail(f"larger than {MAX_BYTES // 1024} KiB; not a logging config.", "", file)
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read the logging config ({getattr(exc, 'strerror', None) or exc}).", "", file) from None
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.", "", file) from None
    except RecursionError:
        raise _fail("the JSON is nested too deeply.", "", file) from None
    return check_logging_config(raw, file=file, logs=logs)


def apply_logging_config(path: str | Path, *, logs: Path | None = None, app_folder: Path | None = None) -> None:
    """Check, then configure logging from an app's ``logging_config.json``."""
    import logging.config

    config = load_logging_config(path, logs=logs, app_folder=app_folder)
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, OSError) as exc:
        raise _fail(f"cannot apply the logging config ({exc}).", "", str(path)) from None
