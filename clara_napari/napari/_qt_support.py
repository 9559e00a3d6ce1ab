"""Qt plumbing of the *Triton Inference* widget: slots that outlive their widget, worker-thread reports
carried onto the GUI thread, and the first-use warm-up."""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)


def alive(method: Callable) -> Callable:
    """A slot that does nothing once the widget's Qt side is gone (queued signals can still arrive then)."""

    @functools.wraps(method)
    def slot(self, *args, **kwargs):
        if self._life["closed"]:
            return None
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:    # "wrapped C/C++ object ... has been deleted": closing under way
            if "deleted" not in str(exc):
                raise
            return None

    return slot


def reporter(signal: Any, life: dict) -> Callable[..., None]:
    """A worker-thread callback that emits ``signal`` while the widget lives."""
    def emit(*args) -> None:
        if not life["closed"]:
            with contextlib.suppress(RuntimeError):   # the bridge went with the widget
                signal.emit(*args)
    return emit


class Bridge(QObject):
    """Carries worker-thread reports onto the GUI thread (queued connections)."""

    progressed = Signal(int, int)
    staged = Signal(str)


def warm_up() -> None:
    """First-use costs of a Labels layer, paid in the worker instead of the GUI thread.

    The first Labels layer of a session imports pandas (its features table) and has vispy build
    its line dash patterns (cached per process) for the layer's polygon overlay; the first run
    imports the Triton clients (grpc, gevent, protobuf). Done in a thread when the widget opens, so
    neither the import work nor the full garbage collections it triggers land on a run's event loop.
    """
    try:
        import google.protobuf.json_format  # noqa: F401
        import google.protobuf.text_format  # noqa: F401
        import pandas  # noqa: F401
        import tritonclient.grpc  # noqa: F401
        import tritonclient.grpc.model_config_pb2  # noqa: F401
        import tritonclient.http  # noqa: F401
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except ImportError as exc:  # only an optimisation: a missing extra is paid for (or reported) by the run
        log.debug("warm-up skipped: %s", exc)


_WARM = threading.Lock()
_warmed = False
#: set when the background warm-up (started by the first widget) is done
WARM = threading.Event()


def start_warm_up() -> None:
    """Pay the first-use costs in a background thread as soon as the widget opens (once per process)."""
    global _warmed
    with _WARM:
        if _warmed:
            return
        _warmed = True

    def warm() -> None:
        try:
            warm_up()
        finally:
            WARM.set()

    threading.Thread(target=warm, name="clara-napari-warm-up", daemon=True).start()
