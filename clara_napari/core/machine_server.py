"""This machine's embedded Triton server, shared by the Dask workers running on it.

On an existing cluster (``--scheduler``) with no server named, the first worker of each machine
starts one embedded server under a file lock and writes its address and key to an owner-only state
file; the machine's other workers find it there (and the key is never in the environment or a
command line).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from .errors import ServerError

log = logging.getLogger(__name__)

#: the servers this process started for its machine (stopped with the worker's sessions)
_STARTED: list = []


def machine_server_state(repository: Path) -> Path:
    """The state file of this machine's embedded server for ``repository`` (its lock: ``.lock``),
    in a folder only this user can write (another user could otherwise plant an address there
    and receive the volumes)."""
    folder = Path(tempfile.gettempdir()) / f"clara-napari-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ServerError(f"{folder}: not a private folder of this user (owner, mode or a link); refused for the "
                          "embedded server's address.")
    tag = hashlib.sha256(str(Path(repository).resolve()).encode()).hexdigest()[:16]
    return folder / f"embedded-{tag}.json"


def machine_server(repository: Path, protocol: str, threads: int | None = None) -> str:
    """The address (``protocol``) of this machine's embedded server for ``repository``; the first
    worker of the machine starts it (under a file lock), the others find it in the lock's state file."""
    import fcntl
    import urllib.request

    from .triton.address import parse_address
    from .triton.embedded import EmbeddedServer
    from .triton.keys import share_server_key

    base = machine_server_state(repository).with_suffix("")
    with open(f"{base}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, ServerError):
                state = json.loads(Path(f"{base}.json").read_text(encoding="utf-8"))
                if parse_address(state[protocol]).is_local and parse_address(state["http"]).is_local:
                    with contextlib.suppress(OSError), urllib.request.urlopen(
                            f"{state['http']}/v2/health/ready", timeout=2) as response:
                        if response.status == 200:
                            share_server_key(state[protocol], state.get("key", ""))
                            return state[protocol]
            server = EmbeddedServer(repository, threads=threads).start()
            _STARTED.append(server)
            tmp = Path(f"{base}.json.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            # owner-only (in a 0700 folder): it holds the server's key for this machine's other workers
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w",
                           encoding="utf-8") as file:
                file.write(json.dumps({"pid": os.getpid(), "http": server.http_url, "grpc": server.grpc_url,
                                       "key": server.key}))
            os.replace(tmp, f"{base}.json")
            return server.http_url if protocol == "http" else server.grpc_url
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_machine_servers() -> None:
    """Stop the machine servers this process started (a worker going away)."""
    while _STARTED:
        server = _STARTED.pop()
        try:
            server.stop()
        except (OSError, ServerError):   # best effort: the worker is going away
            log.debug("stopping the machine's embedded server failed", exc_info=True)
