"""Signals reach the main thread at once, and the main thread never waits where it cannot hear them.

Python runs signal handlers in the main thread only. A process-wide signal (Ctrl-C, SIGTERM) that
the kernel hands to a worker thread just sets a flag; a main thread blocked on a lock (waiting for
a request) would act on it only when the lock is released. So worker threads block these signals
(:func:`block_stop_signals`, inherited by the threads they start), and the main thread waits for
results in short slices (:func:`wait_result`).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import signal
import threading
from typing import Any

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def block_stop_signals() -> None:
    """In a worker thread (and the threads it starts): leave Ctrl-C and SIGTERM to the main thread.

    A signal the kernel hands to a worker only sets Python's flag; a main thread blocked on a
    lock would not see it until that lock is released (a whole request later). Blocked here, the
    signal interrupts the main thread's wait at once.
    """
    with contextlib.suppress(AttributeError, ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def wait_result(future: cf.Future, poll_s: float = 0.1) -> Any:
    """``future.result()`` waited for in short slices, so a signal is acted on within ``poll_s``."""
    while True:
        try:
            return future.result(timeout=poll_s)
        except cf.TimeoutError:
            if future.done():   # done meanwhile, or its own exception is a TimeoutError
                return future.result()




_stopping = threading.Event()


def request_stop() -> None:
    """A signal handler stops the process's work: clean-ups take their fast path (no waiting for
    requests in flight, no goodbye calls to a server that is about to be killed)."""
    _stopping.set()


def clear_stop() -> None:
    _stopping.clear()


def stop_requested() -> bool:
    return _stopping.is_set()
