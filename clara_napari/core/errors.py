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


class ResourceError(VolumeError):
    """A run would need more memory or more windows than allowed (names the file and the figures)."""


class OutputError(VolumeError):
    """An output, publish or logs folder or an output name is refused (names the folder or the inputs)."""


class ConfigError(ClaraNapariError):
    """A config_inference.json is wrong (names the file and the JSON path)."""

    def __init__(self, message: str, *, path: str = "", file: str = "") -> None:
        self.json_path = path
        self.file = file
        self.detail = message
        where = f"{file}: " if file else ""
        at = f"{path}: " if path else ""
        super().__init__(one_line(f"{where}{at}{message}"))


class ConfigProblems(ConfigError):
    """Several problems of one config, reported together (``problems``: each a :class:`ConfigError`
    with its own JSON path); ``json_path`` is the first one's."""

    def __init__(self, problems: list[ConfigError], *, file: str = "", kind: str = "") -> None:
        self.problems = list(problems)
        self.kind = kind
        listed = "; ".join(f"({i}) {p.json_path + ': ' if p.json_path else ''}{p.detail}"
                           for i, p in enumerate(self.problems, 1))
        found = f" (a {kind} config)" if kind else ""
        super().__init__(f"{len(self.problems)} problems{found}: {listed}", file=file)
        self.json_path = self.problems[0].json_path if self.problems else ""


class ServerError(ClaraNapariError):
    """The inference server cannot be reached, started or used (names the server)."""


class ModelMismatchError(ServerError):
    """The model on the server does not match what the app or the data expect."""


class ImplausibleError(ClaraNapariError):
    """Strict mode: the input or the result is not what the app expects (names the volume and the check)."""


class Cancelled(ClaraNapariError):
    """The user cancelled a running job."""


class DicomError(ClaraNapariError):
    """A DICOM series or DICOM SEG cannot be used or written (names the file or folder)."""


class PacsError(ClaraNapariError):
    """A PACS cannot be reached, does not hold what was asked, or refuses a store (names the PACS)."""


class UsageError(ClaraNapariError):
    """A command-line or API argument that cannot work (a missing folder, conflicting options)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (its type's name when it has none), for one-sentence errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
