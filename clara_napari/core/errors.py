"""The project's own exception types.

Every error a user can cause (a bad file, a bad config, a server that is down, a model that
does not match) is raised as one of these, with one sentence naming the file, JSON path or
server, so that the CLI can print it on one line and the GUI can show it as a notification.
"""
from __future__ import annotations


def one_line(text: str) -> str:
    """Escape line breaks and other control characters (keys in a config can hold anything)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class ClaraNapariError(Exception):
    """Base class of every error clara-napari raises on purpose."""


class VolumeError(ClaraNapariError):
    """A volume cannot be read or written (names the file)."""


class ConfigError(ClaraNapariError):
    """A config_inference.json is wrong (names the file and the JSON path)."""

    def __init__(self, message: str, *, path: str = "", file: str = "") -> None:
        self.json_path = path
        self.file = file
        where = f"{file}: " if file else ""
        at = f"{path}: " if path else ""
        super().__init__(one_line(f"{where}{at}{message}"))


class ServerError(ClaraNapariError):
    """The inference server cannot be reached, started or used (names the server)."""


class ModelMismatchError(ServerError):
    """The model on the server does not match what the app or the data expect."""


class ImplausibleError(ClaraNapariError):
    """Strict mode: the input or the result is not what the app expects (names the volume and the check)."""


class Cancelled(ClaraNapariError):
    """The user cancelled a running job."""
