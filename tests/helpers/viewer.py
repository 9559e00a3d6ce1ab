"""Helpers for running napari headless in the tests and scripts/screenshot.py (test tooling: not shipped).

``ensure_display()`` starts an Xvfb server when no ``DISPLAY`` is set (napari draws with OpenGL, so
Qt's ``offscreen`` platform is not enough), and :class:`StallMeter` measures how long the Qt event
loop went without running a timer that should tick every few milliseconds.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time

_XVFB: subprocess.Popen | None = None


def ensure_display(size: str = "1600x1000x24") -> str | None:
    """Make sure ``DISPLAY`` names an X server; start Xvfb if needed. Returns the display or ``None``."""
    global _XVFB
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return os.environ.get("DISPLAY")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    read_fd, write_fd = os.pipe()
    # -displayfd: Xvfb picks a free display number and writes it to the pipe once it is ready
    process = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", size, "-nolisten", "tcp"],
                               pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 30
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            chunk = pipe.read(1)
            if not chunk or chunk == b"\n":
                break
            number += chunk
    if not number.strip().isdigit():
        process.terminate()
        return None
    _XVFB = process
    atexit.register(_stop_xvfb)
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    return os.environ["DISPLAY"]


def _die_with_parent() -> None:  # in the child: Xvfb goes when this process goes, even when it is killed
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # not glibc: Xvfb is still stopped at exit
        pass


def _stop_xvfb() -> None:
    global _XVFB
    if _XVFB is not None and _XVFB.poll() is None:
        _XVFB.terminate()
        try:
            _XVFB.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _XVFB.kill()
    _XVFB = None


class StallMeter:
    """Records the longest gap between ticks of a ``interval_ms`` Qt timer (the event loop's worst stall)."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.max_gap_ms = 0.0
        self.ticks = 0
        #: (seconds since start, gap in ms, note) for every gap over ``4 * interval_ms``
        self.long_gaps: list[tuple[float, float, str]] = []
        #: called at each long gap for a note (e.g. the widget's status line)
        self.note = lambda: ""
        self._last = 0.0
        self._start = 0.0
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> StallMeter:
        self.max_gap_ms, self.ticks, self.long_gaps = 0.0, 0, []
        self._last = self._start = time.perf_counter()
        self._timer.start()
        return self

    def stop(self) -> float:
        self._timer.stop()
        return self.max_gap_ms

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000.0
        self.max_gap_ms = max(self.max_gap_ms, gap)
        if gap > 4 * self.interval_ms:
            self.long_gaps.append((now - self._start, gap, self.note()))
        self._last = now
        self.ticks += 1
