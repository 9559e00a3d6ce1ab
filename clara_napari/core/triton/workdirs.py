"""The embedded server's owner-only temp folder: owner record, private files, linked model
folders, and the removal of folders left by killed runs."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .processes import process_start_time

log = logging.getLogger(__name__)

TEMP_PREFIX = "clara-napari-triton-"
OWNER_FILE = "owner.pid"


def write_owner(folder: Path) -> None:
    """Record this process (PID and start time) as the folder's owner."""
    write_private(folder / OWNER_FILE, f"{os.getpid()} {process_start_time(os.getpid()) or ''}\n")


def owner_alive(folder: Path) -> bool | None:
    """Whether the process recorded in ``folder`` lives (None: nothing recorded)."""
    try:
        pid_text, _, started = (folder / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    now = process_start_time(pid)
    return now is not None and (not started or now == started)   # a reused PID is another process


def referenced_by_a_process(folder: Path) -> bool:
    """Whether a live process names ``folder`` on its command line (a server of an older version)."""
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    return True
    return False


def remove_stale_workdirs(temp_root: str | Path | None = None, *, min_age_s: float = 600.0) -> list[Path]:
    """Remove the temp folders of embedded servers whose owner died (SIGKILL leaves them behind).

    Only this user's folders named ``clara-napari-triton-*``, not links, whose recorded owner PID is
    dead (or reused by another process); a folder without a record (an older version, or one
    being created this instant) only when older than ``min_age_s`` and named by no live process.
    Returns the folders removed.
    """
    root = Path(temp_root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(root.glob(TEMP_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        alive = owner_alive(folder)
        if alive or (alive is None and time.time() - info.st_mtime < min_age_s):
            continue
        if referenced_by_a_process(folder):   # e.g. a server that outlived its owner still uses it
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            log.info("removed %s, left by a run that was killed", folder)
            removed.append(folder)
    return removed


def write_private(path: Path, text: str) -> None:
    """A new owner-only file (0600, never through an existing file or link)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w", encoding="utf-8") as file:
        file.write(text)


def link_model_folder(source: Path, target: Path) -> None:
    """``target`` mirrors a python-backend model folder with links, its version folders as real
    folders of links: the stub's ``__pycache__`` lands in our temp folder, never in the user's."""
    target.mkdir(mode=0o700)
    for item in sorted(source.iterdir()):
        if item.name.isdigit() and item.is_dir() and not item.is_symlink():
            (target / item.name).mkdir(mode=0o700)
            for child in sorted(item.iterdir()):
                if child.name != "__pycache__":
                    (target / item.name / child.name).symlink_to(child)
        else:
            (target / item.name).symlink_to(item)

