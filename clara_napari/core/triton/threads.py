"""A fixed set of long-lived threads that own network clients for a whole session.

Why: tritonclient's HTTP client runs on gevent, and gevent gives every thread that touches it its
own hub (an event loop holding an epoll and an eventfd descriptor, and more). A hub is not freed
when its thread ends. The window engine starts new threads for every volume, so clients made on
those threads leaked about 4 descriptors per thread: a few hundred volumes exhausted
``ulimit -n`` and the process aborted. Here every request runs on one of ``size`` threads that
live as long as the model; when the model is closed each thread runs ``on_exit`` (closing its
client and its hub) before it ends, so descriptors and threads stay flat whatever the number of
volumes.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..interrupts import block_stop_signals, wait_result

_STOP = object()


class ClientThreads:
    """``size`` daemon threads running calls in order of arrival; :meth:`call` waits for the result."""

    def __init__(self, size: int, *, name: str, on_exit: Callable[[], None] | None = None) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._on_exit = on_exit
        self._closed = False
        self._lock = threading.Lock()   # no call is queued behind the stop marks
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, int(size)))]
        for thread in self._threads:
            thread.start()
        self._idents = {t.ident for t in self._threads}

    @property
    def size(self) -> int:
        return len(self._threads)

    def on_worker(self) -> bool:
        return threading.get_ident() in self._idents

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on a worker thread (directly when already on one)."""
        if self.on_worker():
            return fn(*args, **kwargs)
        future: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the client threads are closed")
            self._jobs.put((future, fn, args, kwargs))
        try:
            return wait_result(future)
        except BaseException:
            future.cancel()   # interrupted (Ctrl-C) or failed: a call still queued never starts
            raise

    def _loop(self) -> None:
        block_stop_signals()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                future, fn, args, kwargs = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 (handed to the caller, who raises it)
                    future.set_exception(exc)
                del job, future, fn, args, kwargs
        finally:
            if self._on_exit is not None:
                with contextlib.suppress(Exception):
                    self._on_exit()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the threads once their current call returns (each runs ``on_exit`` first).

        Returns whether every thread ended within ``timeout_s`` (a thread stuck in a request
        is left to end with its request: it is a daemon).
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads if t is not threading.current_thread())


def destroy_gevent_hub() -> None:
    """Close this thread's gevent hub and its event loop, if it has one (never creates one)."""
    if "gevent" not in sys.modules:
        return
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    if hub is not None:
        hub.destroy(destroy_loop=True)
