"""The Triton Inference widget end to end: real viewer, real embedded Triton server, real deepbet model.

The sample T1 MRI is cropped to 96³ voxels and the app's window set to 96³ (a modified copy of
the bundled app in tmp_path) so a run takes seconds on two cores.
"""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

from napari.layers import Labels  # noqa: E402
from napari.utils import progress as napari_progress  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from clara_napari.core.volume import read_volume  # noqa: E402
from clara_napari.napari._geometry import KEY  # noqa: E402
from clara_napari.napari._panel import REPLACE  # noqa: E402
from clara_napari.napari._servers import SERVERS  # noqa: E402
from clara_napari.napari._widget import CONFIG_FILE, TritonInferenceWidget  # noqa: E402

from helpers import assert_same_geometry  # noqa: E402
from helpers.viewer import StallMeter  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.triton]
RUN_TIMEOUT_MS = 180_000


def open_with_widget(make_napari_viewer, path, app_file=None):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="clara-napari")
    _, widget = viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
    if app_file is not None:
        widget._app.value = CONFIG_FILE
        widget._app_file.value = str(app_file)
    return viewer, image, widget


def wait_idle(qtbot, widget, timeout=RUN_TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_widget_segments_the_sample_through_the_embedded_server(make_napari_viewer, qtbot, crop, tmp_path,
                                                                 record_property):
    """Acceptance 2: segment, overlay with matching geometry, re-run in place on the same server, export."""
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    assert widget._image.value is image
    assert [s.value for s in widget._roi] == [96, 96, 96]
    reports = []
    widget._bridge.progressed.connect(lambda done, total: reports.append((done, total)))

    meter = StallMeter(10).start()
    worker = widget.run()
    assert worker is not None and widget._run.text == "Cancel"
    wait_idle(qtbot, widget)
    stall = meter.stop()
    record_property("longest_event_loop_stall_ms", round(stall, 1))
    print(f"\nlongest event-loop stall during the first run (96^3 crop, server start included): {stall:.0f} ms")

    outcome = widget.last_outcome
    assert outcome is not None and outcome.error is None and not outcome.cancelled, outcome
    assert widget._run.text == "Run"
    assert reports and reports[-1][0] == reports[-1][1]
    assert widget._bar.value == widget._bar.max == reports[-1][1]
    [labels] = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    for key in ("scale", "translate", "rotate"):
        assert np.array_equal(getattr(labels, key), getattr(image, key)), key
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.uint8
    assert labels.features["name"].tolist() == ["background", "brain"]
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0][:3], [0xf5 / 255, 0xa6 / 255, 0x23 / 255], atol=1e-6)
    assert labels.metadata[KEY]["model"] == "deepbet_brain_t1"
    # the centre of the head is mostly brain: a real share of it is found, and what is found is brain
    # (the labels sit on the right voxels; a 96^3 crop is too small for deepbet to find the whole brain)
    found, brain = labels.data > 0, crop["mask"].array > 0
    assert found.mean() > 0.15 and (found & brain).sum() / found.sum() > 0.9
    assert "embedded Triton" in widget._status.value and "deepbet_brain_t1" in widget._status.value
    [server] = SERVERS.running()
    pid = server.process.pid

    # a second run (re-run: replace) updates the same layer and reuses the running server (also after the
    # layer list changed)
    widget._rerun.value = REPLACE
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="another image")
    widget._image.value = image
    meter.start()
    widget.run()
    wait_idle(qtbot, widget)
    stall_again = meter.stop()
    record_property("longest_event_loop_stall_rerun_ms", round(stall_again, 1))
    print(f"longest event-loop stall during a re-run: {stall_again:.0f} ms")
    assert [layer for layer in viewer.layers if isinstance(layer, Labels)] == [labels]
    assert labels.data.shape == image.data.shape and labels.data.any()
    assert SERVERS.running() == [server] and server.process.pid == pid   # the same server, not a new one
    assert stall_again < 1000   # the target is 100 ms; this bound only catches a GUI-thread run

    # export: the MHD output and the publish bundle
    worker = widget.export(folder=tmp_path / "export")
    qtbot.waitUntil(lambda: (tmp_path / "export" / "publish" / "config.meta").exists(), timeout=30_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    out = read_volume(tmp_path / "export" / "output" / "t1_crop.mhd")
    assert_same_geometry(out, read_volume(crop["path"]))
    assert np.array_equal(out.array, labels.data)
    meta = json.loads((tmp_path / "export" / "publish" / "config.meta").read_text())
    assert meta["density"] == "t1_crop.mhd" and meta["seg_masks"] == ["t1_crop.out.mhd"]

    # closing the viewer stops the embedded server
    viewer.close()
    qtbot.waitUntil(lambda: not SERVERS.running(), timeout=30_000)


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, crop):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["many_windows_app"])
    seen = []
    activity = []

    def on_progress(done, total):
        seen.append((done, total))
        activity.extend(p for p in napari_progress._all_instances if "Triton Inference" in (p.desc or ""))
        if len(seen) == 1:
            widget._run.changed.emit(True)    # the Run button, now labelled Cancel

    widget._bridge.progressed.connect(on_progress)
    widget.run()
    assert widget._run.text == "Cancel"
    wait_idle(qtbot, widget)
    assert widget.last_outcome.cancelled
    assert seen and seen[-1][0] < seen[-1][1], seen           # stopped before the last window
    assert activity, "the run showed no progress in the activity dock"
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert widget._run.text == "Run" and "cancelled" in widget._status.value


def test_dead_server_gives_an_error_notification(make_napari_viewer, qtbot, crop):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    widget.ready_timeout_s = 1.0
    widget._server.value = f"127.0.0.1:{free_port()}"
    before = len(notification_manager.records)
    widget.run()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.last_outcome.error is not None
    errors = [n for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]
    assert errors and "Triton Inference" in errors[-1].message and "connection refused" in errors[-1].message
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert widget._run.text == "Run" and widget._status.value.startswith("failed")


def test_model_list_is_read_from_the_server(make_napari_viewer, qtbot, crop):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"])
    worker = widget.refresh_models()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget._server_info is not None, timeout=5_000)
    names = [value for value in widget._model.choices if value]
    assert {"deepbet_brain_t1", "lung_air_density"} <= set(names)
    assert "READY" in widget._status.value and "ready at http://127.0.0.1:" in widget._status.value


def test_settings_persist_between_sessions(make_napari_viewer, settings_dir):
    viewer = make_napari_viewer()
    first = TritonInferenceWidget(viewer)
    assert first._server.value == "auto"
    assert not (settings_dir / "napari_widget.json").exists()      # opening the panel changes nothing
    first._server.value = "grpc://localhost:8001"
    first._app.value = "lung_ct"
    stored = json.loads((settings_dir / "napari_widget.json").read_text())
    assert stored["server"] == "grpc://localhost:8001" and stored["app"] == "lung_ct"
    second = TritonInferenceWidget(viewer)
    assert second._server.value == "grpc://localhost:8001" and second._app.value == "lung_ct"
    assert [s.value for s in second._roi] == [320, 320, 64]     # the lung app's window
    (settings_dir / "napari_widget.json").write_text("{not json")
    assert TritonInferenceWidget(viewer)._server.value == "auto"   # a broken file falls back to defaults


def test_image_picker_follows_the_viewer_outside_a_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = TritonInferenceWidget(viewer)        # not docked: it keeps itself in sync
    assert widget._image.choices == ()
    first = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="first")
    viewer.add_image(np.zeros((5, 6), np.float32), name="flat")          # 2D: not offered
    viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="some labels")   # labels: not offered
    second = viewer.add_image(np.ones((4, 5, 6), np.float32), name="second")
    assert set(widget._image.choices) == {first, second}
    first.name = "renamed"
    assert {widget._image.native.itemText(i) for i in range(widget._image.native.count())} == {"renamed", "second"}
    viewer.layers.remove(first)
    assert list(widget._image.choices) == [second]


def test_closing_the_viewer_mid_run_stops_the_run_and_the_server(make_napari_viewer, qtbot, crop):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["many_windows_app"])
    closed = []

    def on_progress(done, total):
        if not closed:
            closed.append(done)
            viewer.close()

    widget._bridge.progressed.connect(on_progress)
    widget.run()
    wait_idle(qtbot, widget)
    assert closed
    assert widget.last_outcome is None          # nothing was shown in (or added to) the closed viewer
    qtbot.waitUntil(lambda: not SERVERS.running(), timeout=30_000)


def test_auth_headers_and_a_server_that_comes_back(make_napari_viewer, qtbot, crop, model_repository):
    """A server with restricted APIs: refused without the header (a notification, no layer), accepted
    with it from the widget's headers field; after the server went away and came back on the same
    port, the next run works again."""
    from clara_napari.core.triton.embedded import EmbeddedServer

    categories = "health,metadata,inference,shared-memory,model-config,model-repository,statistics"
    port = free_port()
    extra = [f"--http-restricted-api={categories}:clara-key=secret"]
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    widget.ready_timeout_s = 5.0
    widget._server.value = f"127.0.0.1:{port}"
    with EmbeddedServer(model_repository, http_port=port, extra_args=extra, headers={"clara-key": "secret"}):
        before = len(notification_manager.records)
        widget.run()
        wait_idle(qtbot, widget, timeout=60_000)
        errors = [n for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]
        assert errors and "refused the request" in errors[-1].message
        assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
        widget._headers.value = "clara-key=secret"
        assert widget.transport() == {"headers": {"clara-key": "secret"}}
        widget.run()
        wait_idle(qtbot, widget)
        assert widget.last_outcome.error is None, widget.last_outcome.error
    widget.run()   # the server is gone
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.last_outcome.error is not None and widget._status.value.startswith("failed")
    with EmbeddedServer(model_repository, http_port=port, extra_args=extra, headers={"clara-key": "secret"}):
        widget.run()   # ... and back: the widget recovers
        wait_idle(qtbot, widget)
        assert widget.last_outcome.error is None
    assert len([layer for layer in viewer.layers if isinstance(layer, Labels)]) == 2     # a new layer per good run
