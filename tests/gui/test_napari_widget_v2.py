"""The tidied Triton Inference panel in a real viewer (issue 16): edits survive re-runs, probabilities,
measurements, a dead server reported at once, the collapsible Advanced section, the keyboard shortcut.

Runs use ``server = local`` (the real deepbet model in onnxruntime, in process) on a 96³ crop of the
T1 sample; the embedded-Triton path is covered by tests/gui/test_napari_widget.py.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

from napari.layers import Image, Labels  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from qtpy.QtWidgets import QLineEdit  # noqa: E402
from test_napari_widget import free_port, open_with_widget, wait_idle  # noqa: E402

from clara_napari.napari._panel import NEW_LAYER, REPLACE, to_csv  # noqa: E402
from clara_napari.napari._widget import RUN_KEY, TritonInferenceWidget  # noqa: E402

from helpers import dice  # noqa: E402
from helpers.viewer import StallMeter  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]
EDIT = 7          # a label value the model never writes


def local_widget(make_napari_viewer, crop):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    widget._server.value = "local"
    return viewer, image, widget


def labels_layers(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def paint_edit(layer: Labels) -> int:
    """A user's brush stroke (through the layer's own painting, so it is in its undo history)."""
    layer.brush_size = 9
    layer.selected_label = EDIT
    centre = [s // 2 for s in layer.data.shape]
    layer.paint(centre, EDIT, refresh=True)
    painted = int(np.count_nonzero(layer.data == EDIT))
    assert painted > 0
    return painted


def test_rerun_never_destroys_edits(make_napari_viewer, qtbot, crop, settings_dir, record_property):
    viewer, image, widget = local_widget(make_napari_viewer, crop)
    assert widget._rerun.value == NEW_LAYER                  # the default: a new layer each run
    meter = StallMeter(10)
    meter.note = lambda: widget._status.value[:60]
    meter.start()
    widget.run()
    wait_idle(qtbot, widget)
    first_stall = meter.stop()
    print("\nfirst run, gaps over 40 ms (s, ms, status):", [(round(t, 2), round(g), n) for t, g, n in meter.long_gaps])
    assert widget.last_outcome.error is None, widget.last_outcome.error
    [first] = labels_layers(viewer)
    assert first.name.startswith(f"{image.name} brain_96 ") and first.name.count(":") == 2    # app and time
    painted = paint_edit(first)
    edited = first.data.copy()

    meter.start()
    widget.run()                                            # re-run: a new layer, the edited one untouched
    wait_idle(qtbot, widget)
    rerun_stall = meter.stop()
    print("re-run, gaps over 40 ms (s, ms, status):", [(round(t, 2), round(g), n) for t, g, n in meter.long_gaps])
    record_property("stall_first_run_local_ms", round(first_stall, 1))
    record_property("stall_rerun_local_ms", round(rerun_stall, 1))
    print(f"\nlongest event-loop stall (server local, 96^3): first run {first_stall:.0f} ms, "
          f"re-run {rerun_stall:.0f} ms")
    assert widget.last_outcome.error is None
    first_again, second = labels_layers(viewer)
    assert first_again is first and np.array_equal(first.data, edited)
    assert int(np.count_nonzero(first.data == EDIT)) == painted
    assert second.name != first.name and not np.any(second.data == EDIT)
    assert widget.result_layer is second

    # replace (undoable): the edit is replaced, and Ctrl+Z (the layer's undo) brings it back
    widget._rerun.value = REPLACE
    paint_edit(second)
    with_edit = second.data.copy()
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_outcome.error is None
    assert labels_layers(viewer) == [first, second]          # no new layer
    assert not np.any(second.data == EDIT)
    second.undo()
    assert np.array_equal(second.data, with_edit)
    # the choice is remembered
    assert TritonInferenceWidget(viewer)._rerun.value == REPLACE
    assert rerun_stall < 1000     # reported figure; this bound only catches a run on the GUI thread


def test_probability_layer_equals_the_api(make_napari_viewer, qtbot, crop):
    from clara_napari.api import run_app
    from clara_napari.core.volume import read_volume

    viewer, image, widget = local_widget(make_napari_viewer, crop)
    widget._probabilities.value = True
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_outcome.error is None, widget.last_outcome.error
    [scores] = [layer for layer in viewer.layers if isinstance(layer, Image) and layer.name.endswith("probabilities")]
    [labels] = labels_layers(viewer)
    assert scores.data.dtype == np.float32 and scores.data.shape == image.data.shape
    for key in ("scale", "translate", "rotate"):
        assert np.array_equal(getattr(scores, key), getattr(image, key)), key
    expected = run_app(read_volume(crop["path"]), str(crop["quick_app"]), server="local", probabilities=True)
    np.testing.assert_allclose(scores.data, expected.probabilities.array, rtol=0, atol=1e-5)
    assert np.array_equal(labels.data, expected.labels.array)
    # a re-run that replaces updates the score layer too (no new layers)
    widget._rerun.value = REPLACE
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_outcome.error is None
    assert [layer.name for layer in viewer.layers] == [image.name, labels.name, scores.name]
    np.testing.assert_allclose(scores.data, expected.probabilities.array, rtol=0, atol=1e-5)


def test_measurements_table_and_csv_export(make_napari_viewer, qtbot, crop, tmp_path):
    viewer, image, widget = local_widget(make_napari_viewer, crop)
    reference = viewer.add_labels(crop["mask"].array.astype(np.uint8), name="reference mask",
                                  scale=image.scale, translate=image.translate)
    widget._reference.value = reference
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_outcome.error is None, widget.last_outcome.error
    result = widget.result_layer
    [row] = widget.measurements
    voxel_ml = math.prod(crop["mask"].spacing) / 1000.0
    voxels = int(np.count_nonzero(result.data == 1))
    assert (row.value, row.name, row.voxels) == (1, "brain", voxels)
    assert row.ml == pytest.approx(voxels * voxel_ml, rel=1e-12)
    assert row.dice == pytest.approx(dice(result.data == 1, reference.data == 1), rel=1e-12)
    assert widget._table.to_dict("list")["voxels"] == [str(voxels)]
    assert widget.copy_table() == to_csv(widget.measurements, delimiter="\t")
    assert widget._measurements.text() == f"Measurements: 1 label(s), {row.ml:.1f} ml"

    # an edit, measured again, then exported with the bundle
    painted = paint_edit(result)
    widget.update_measurements()
    after = {r.value: r for r in widget.measurements}
    assert after[1].voxels == int(np.count_nonzero(result.data == 1)) < voxels
    assert after[EDIT].voxels == painted and after[EDIT].name == f"label {EDIT}"
    widget.export(folder=tmp_path / "export")
    csv_path = tmp_path / "export" / "output" / "t1_crop.measurements.csv"
    qtbot.waitUntil(lambda: "exported" in widget._status.value or "failed" in widget._status.value, timeout=60_000)
    assert csv_path.read_text() == to_csv(widget.measurements)
    assert [r.value for r in widget.measurements] == [1, EDIT]


def test_dead_server_reported_within_a_second(make_napari_viewer, qtbot, crop, record_property):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    address = f"127.0.0.1:{free_port()}"
    widget._server.value = address
    before = len(notification_manager.records)
    started = time.perf_counter()
    widget.run()
    qtbot.waitUntil(lambda: widget._status.value.startswith("failed"), timeout=30_000)
    seconds = time.perf_counter() - started
    wait_idle(qtbot, widget, timeout=30_000)
    record_property("dead_server_reported_s", round(seconds, 3))
    print(f"\ndead server reported in the panel after {seconds * 1000:.0f} ms")
    errors = [n for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]
    message = str(widget.last_outcome.error)
    assert "connection refused" in message and address in message
    assert errors and errors[-1].message == f"Triton Inference: {message}"          # the whole message
    assert widget._status.value == f"failed: {message}" and widget._status.tooltip == message
    assert not labels_layers(viewer)
    assert seconds < 5.0     # the target is 1 s (reported above); a generous bound for a loaded machine


def test_panel_is_tidy_and_has_a_shortcut(make_napari_viewer, qtbot, crop):
    viewer, image, widget = local_widget(make_napari_viewer, crop)
    assert widget._headers.native.echoMode() == QLineEdit.EchoMode.Password
    assert not widget._advanced.isExpanded()
    for advanced in (widget._protocol, widget._headers, widget._ssl_ca, widget._in_flight, widget._rerun,
                     widget._probabilities):      # folded away in Advanced
        assert widget._advanced.isAncestorOf(advanced.native)
    front = [w for w in widget if w.native.isVisibleTo(widget.native)]
    assert front == [widget._image, widget._app, widget._app_file, widget._server, widget._run, widget._bar,
                     widget._status, widget._export_dir, widget._export]      # the app file: a config file is chosen
    # the shortcut runs the panel on the selected image layer
    other = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="other")
    widget._image.value = other
    viewer.layers.selection.active = image
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_I, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert RUN_KEY == "Control-Shift-I"
    assert widget._image.value is image and widget.running
    wait_idle(qtbot, widget)
    assert widget.last_outcome.error is None and widget.result_layer is not None
