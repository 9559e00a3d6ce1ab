"""Progress reporting and cooperative cancellation for long work."""
from __future__ import annotations

import threading
from collections.abc import Callable

#: ``progress(done, total)``: windows (or steps) done so far out of ``total``.
Progress = Callable[[int, int], None]


class CancelToken:
    """Set from any thread (a Cancel button, Ctrl-C); long loops check it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
