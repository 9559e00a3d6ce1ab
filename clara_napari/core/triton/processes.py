"""The embedded server's child process: started from one long-lived thread, dying with us, its
process group, its python-backend stubs and their shared memory, and the key in its command line.

Linux only (``/proc``, ``prctl``); the embedded server runs nowhere else.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any


def die_with_parent() -> None:  # runs in the child between fork and exec
    os.umask(0o077)  # the server's files and shared memory (patient voxels) are owner-only
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()  # own session: a terminal's Ctrl-C reaches only us, and we stop the server in order


class Spawner:
    """Starts children from one long-lived thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process; a
    server started from a short-lived worker (a napari worker thread) would otherwise be killed
    when that worker finishes.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="clara-napari-spawner", daemon=True)
                self._thread.start()
        future: cf.Future = cf.Future()
        self._jobs.put((future, args, kwargs))
        return future.result()

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._jobs.get()
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 (handed back to the caller, who raises it)
                future.set_exception(exc)


SPAWNER = Spawner()


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stub_regions(pgid: int) -> list[str]:
    """Names of the python backend's shared-memory regions, read from its stubs' command lines."""
    names = []
    for pid in group_members(pgid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region")]
    return names


def owner_only_regions(pgid: int) -> list[str]:
    """Make the python backend's shared-memory regions owner-only; returns their names.

    The backend creates them with mode 0644 whatever the umask (Boost ``fchmod``s them); they
    hold patient voxels. Called every poll while the server starts, before any voxel is sent.
    """
    names = stub_regions(pgid)
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(f"/dev/shm/{name}").st_mode & 0o077:
                os.chmod(f"/dev/shm/{name}", 0o600)
    return names

def process_start_time(pid: int) -> str | None:
    """The start time (clock ticks after boot) of process ``pid``, None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def scrub_argument(pid: int, secret: str) -> bool:
    """Overwrite ``secret`` in the command line of our child ``pid`` once it has parsed it.

    ``/proc/<pid>/cmdline`` is readable by every user, and Triton takes its restricted-API key only
    as an argument; its argument area is rewritten through ``/proc/<pid>/mem`` (allowed for our own
    child). Returns whether the secret is gone from the command line.
    """
    if not secret:
        return True
    needle = secret.encode()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])   # arg_start, arg_end (fields 48 and 49)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            at = area.find(needle)
            while at >= 0:
                mem.seek(start + at)
                mem.write(b"*" * len(needle))
                at = area.find(needle, at + len(needle))
        return needle not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False

