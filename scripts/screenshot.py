"""Render docs/screenshot.png: napari with the T1 sample, the brain overlay and the Triton Inference panel.

    .venv/bin/python scripts/screenshot.py [--output docs/screenshot.png] [--runs 2]

Runs headless (starts Xvfb when no DISPLAY is set). The segmentation runs through the widget, as a
user would click it: embedded Triton server, the bundled app ``brain_extraction_t1`` on the whole
sample. While each run goes, a 10 ms Qt timer measures the longest event-loop stall, printed at
the end (the numbers docs/napari.md quotes). Widget settings go to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--app", default="brain_extraction_t1")
    parser.add_argument("--runs", type=int, default=1, help="runs to time (the screenshot shows the last)")
    parser.add_argument("--rerun", choices=["new layer", "replace (undoable)"], default="new layer",
                        help="what the panel's re-runs do (its Advanced → re-run)")
    args = parser.parse_args(argv)

    os.environ.setdefault("CLARA_NAPARI_CONFIG_DIR", tempfile.mkdtemp(prefix="clara-napari-settings-"))
    sys.path.insert(0, str(ROOT / "tests"))      # the display and stall helpers live with the tests
    from helpers.viewer import StallMeter, ensure_display

    if ensure_display() is None:
        print("no X display and no Xvfb (apt-get install xvfb libgl1-mesa-dri)", file=sys.stderr)
        return 1
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    viewer = napari.Viewer(title="clara-napari: Triton Inference")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("clara-napari", "mr_t1")
    _, widget = viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
    widget._app.value = args.app
    widget._rerun.value = args.rerun
    from clara_napari.napari._widget import WARM

    loop = QEventLoop()
    while not WARM.is_set():              # the panel's one-time warm-up (a user takes a moment to click Run)
        napari.qt.get_qapp().processEvents()
        time.sleep(0.02)
    for run in range(args.runs):
        meter = StallMeter(10)
        meter.note = lambda: widget._status.value[:40]
        meter.start()
        started = time.perf_counter()
        worker = widget.run()
        if worker is None:
            return 1
        worker.finished.connect(lambda: QTimer.singleShot(200, loop.quit))
        loop.exec()
        stall = meter.stop()
        outcome = widget.last_outcome
        if outcome is None or outcome.segmentation is None:
            print(f"run {run + 1} failed: {outcome.error if outcome else 'no outcome'}", file=sys.stderr)
            return 1
        print(f"run {run + 1}: {time.perf_counter() - started:.1f} s, longest event-loop stall {stall:.0f} ms "
              f"({meter.ticks} ticks of 10 ms)")
        worst = sorted(meter.long_gaps, key=lambda g: -g[1])[:3]
        print("  longest gaps: " + "; ".join(f"{ms:.0f} ms at {at:.1f} s ({note})" for at, ms, note in worst))
    print(widget._status.value)
    widget._measurements.expand(animate=False)      # show the table (after the timed runs)
    image = viewer.layers[0]
    viewer.dims.set_point(0, image.translate[0] + image.scale[0] * (image.data.shape[0] * 0.45))
    viewer.layers.selection = {viewer.layers[-1]}
    for _ in range(20):
        napari.qt.get_qapp().processEvents()
        time.sleep(0.02)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.screenshot(str(args.output), canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
