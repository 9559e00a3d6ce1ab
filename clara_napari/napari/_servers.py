"""Embedded Triton servers shared by the widgets of this process.

One server per model repository, started lazily (on the first run or model listing, in a worker
thread) and kept for later runs; stopped when the last widget using it goes (its viewer closes),
and at exit (the core stops every embedded server then too).
"""
from __future__ import annotations

import atexit
import logging
import subprocess
import threading
from pathlib import Path

from ..core.triton.embedded import EmbeddedServer

log = logging.getLogger(__name__)


class ServerPool:
    def __init__(self) -> None:
        self._servers: dict[Path, EmbeddedServer] = {}
        self._lock = threading.Lock()
        self._users: set[int] = set()

    def embedded(self, repository: Path) -> EmbeddedServer:
        """The running server for ``repository``, started now if needed (blocks: call it off the GUI thread)."""
        from ..core.apps import refuse_python_models

        key = Path(repository).resolve()
        refuse_python_models(key)  # an app's python-backend model is code: only when trusted
        with self._lock:
            server = self._servers.get(key)
            if server is None or not server.running:
                server = EmbeddedServer(key)
                server.start()
                self._servers[key] = server
            return server

    def running(self) -> list[EmbeddedServer]:
        with self._lock:
            return [s for s in self._servers.values() if s.running]

    def acquire(self, owner: int) -> None:
        self._users.add(owner)

    def release(self, owner: int) -> None:
        self._users.discard(owner)
        if not self._users:
            self.stop_all()

    def stop_all(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            try:
                server.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # best effort (the core also stops them at exit)
                log.warning("could not stop the embedded Triton server for %s: %s", server.repository, exc)


SERVERS = ServerPool()
atexit.register(SERVERS.stop_all)
