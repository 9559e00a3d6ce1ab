"""How a run stopped by a signal ends: the first SIGINT/SIGTERM cancels it and raises :class:`Stopped`;
the CLI then exits with 128 + the signal's number (:func:`exit_now`)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("clara_napari")


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal; the CLI exits with 128 + ``signum`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_now(code: int) -> None:
    """Exit without the interpreter's slow teardown of every loaded library (about a second on a
    busy machine): the run's clean-up is done, the exit handlers (log files, any server or shared
    memory still registered) run here, then the process ends with ``code``."""
    import atexit

    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def stop_handler(cancel):
    """The first SIGINT/SIGTERM cancels the run and raises :class:`Stopped` in the main thread, whatever
    it waits on; the clean-up (the ``finally`` blocks: partial files, shared memory, the embedded
    server, killed rather than shut down) then runs to its end: later signals do not cut it short."""
    def handler(signum, frame):
        if cancel.cancelled:
            log.warning("already stopping; cleaning up")
            return
        cancel.cancel()
        from ..core.interrupts import request_stop
        from ..core.triton.embedded import kill_on_stop

        request_stop()
        kill_on_stop()
        raise Stopped(signum)
    return handler
