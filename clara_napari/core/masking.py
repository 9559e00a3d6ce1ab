"""Secrets never reach stderr, the logs or a listing.

The secrets this tool handles are request header values (``--header``, ``$CLARA_NAPARI_HEADERS``,
the widget's header field: auth tokens) and credentials in a server URL (``user:pass@host``).
:func:`mask` hides both in any text; :func:`remember` registers header values for the whole
process, and :class:`MaskingFilter` applies :func:`mask` to every log record (message, arguments
and traceback), so every error path that ends in a log line or the CLI's one-line error is masked.
"""
from __future__ import annotations

import logging
import re
import threading

MASK = "***"
#: values shorter than this are not masked in free text (masking "1" everywhere would garble every
#: message); a header value that short is no secret anyway
MIN_SECRET_LENGTH = 4

# userinfo of a URL (``scheme://user:pass@host``) or of a bare ``user:pass@host:port``
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@'\"]+@")
_BARE_USERINFO = re.compile(r"(?<![\w/.@:-])[^\s/@'\":]+:[^\s/@'\"]*@(?=[\w.\[-])")

_secrets: set[str] = set()
_lock = threading.Lock()


def remember(*values: str) -> None:
    """Mask these values (header values, passwords) wherever :func:`mask` runs from now on."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def forget_all() -> None:
    """Drop every remembered value (tests)."""
    with _lock:
        _secrets.clear()


def mask(text: object, extra: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with URL credentials and remembered (and ``extra``) secret values replaced by ``***``."""
    out = str(text)
    out = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", out)
    out = _BARE_USERINFO.sub(MASK + "@", out)
    with _lock:
        values = sorted(_secrets | {v for v in extra if v and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    for value in values:
        if value in out:
            out = out.replace(value, MASK)
    return out


def split_userinfo(text: str) -> tuple[str, str]:
    """``scheme://user:pass@host:port`` → (``scheme://host:port``, ``user:pass``); no userinfo: (text, "")."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return text, ""
    return f"{scheme}{sep}{hostport}{slash}{path}", userinfo


def describe_header_item(item: str) -> str:
    """A malformed ``KEY=VALUE`` header item for an error message, without its value: the name
    when one can be told (``Authorization: ...`` → ``'Authorization: ***'``), else its length."""
    name = re.match(r"\s*([A-Za-z0-9_.-]{1,64})\s*([:= ])", item)
    if name:
        return f"'{name.group(1)}{name.group(2).strip()} {MASK}'"
    return f"of {len(item)} characters"


def parse_header_items(items: list[str], where: str = "header") -> dict[str, str]:
    """``KEY=VALUE`` items → a header dict; the values are remembered as secrets. A malformed item
    raises :class:`~clara_napari.core.errors.ServerError` that never quotes its value."""
    from .errors import ServerError

    headers: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # the whole item, what follows its name, and each long word after the name
            remember(item.strip(), re.split(r"[:= ]", item.strip(), maxsplit=1)[-1].strip(),
                     *(t for t in re.split(r"[\s:=]+", item.strip())[1:] if len(t) >= 8))
            raise ServerError(f"{where} {describe_header_item(item)} is not KEY=VALUE.")
        headers[key.strip()] = value.strip()
        remember(value.strip())
    return headers


class MaskingFilter(logging.Filter):
    """Masks every record that passes a handler: its message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError, IndexError):   # a broken format string: logging reports it
            return True
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Add :class:`MaskingFilter` to every handler not masked yet: of ``logger``, or of the root logger
    and every named logger (an app's logging config may give handlers to any of them)."""
    if logger is not None:
        loggers = [logger]
    else:
        loggers = [logging.getLogger()] + [item for item in list(logging.Logger.manager.loggerDict.values())
                                           if isinstance(item, logging.Logger)]
    for each in loggers:
        for handler in list(each.handlers):
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(MaskingFilter())
