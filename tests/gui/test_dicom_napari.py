"""DICOM SEG in a real napari viewer (Xvfb + Mesa): opened on its series, written by the widget's export."""
from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("highdicom")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one; the GUI tests cannot run.")

from napari.layers import Image, Labels  # noqa: E402

from clara_napari.core.apps import resolve_app  # noqa: E402
from clara_napari.core.dicom.seg import read_seg  # noqa: E402
from clara_napari.core.dicom.writer import write_app_seg  # noqa: E402
from clara_napari.core.volume import read_volume  # noqa: E402
from clara_napari.napari._servers import SERVERS  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(tmp_path / "settings"))


def test_seg_opens_as_labels_on_its_series(make_napari_viewer, small_ct_series, tmp_path):
    source = read_volume(small_ct_series)
    labels = np.zeros(source.array.shape, np.uint8)
    labels[3:9, 40:200, 30:150] = 1
    seg_file = write_app_seg(source.with_array(labels), resolve_app("lung_ct"), tmp_path / "lung.seg.dcm")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(small_ct_series), plugin="clara-napari")
    [layer] = viewer.open(str(seg_file), plugin="clara-napari")
    assert isinstance(image, Image) and isinstance(layer, Labels)
    assert layer.name == "lung.seg"
    for key in ("scale", "translate", "rotate"):
        np.testing.assert_allclose(getattr(layer, key), getattr(image, key), atol=1e-9, err_msg=key)
    assert layer.data.shape == image.data.shape
    np.testing.assert_array_equal(layer.data, labels)
    assert layer.features["name"].tolist() == ["background", "lung"]
    # the colour survives the SEG's CIELab round trip (#4fa3e0)
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0][:3], [0x4F / 255, 0xA3 / 255, 0xE0 / 255], atol=1.5 / 255)
    # the same voxel in world coordinates: a labelled voxel of the series is labelled in the layer
    world = image.data_to_world((5, 100, 90))
    assert layer.data[tuple(int(round(v)) for v in layer.world_to_data(world))] == 1


@pytest.mark.slow
@pytest.mark.triton
def test_widget_export_writes_a_seg_for_a_dicom_series(make_napari_viewer, qtbot, small_ct_series, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(small_ct_series), plugin="clara-napari")
    _, widget = viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
    widget._app.value = "lung_ct"
    widget._image.value = image
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    assert widget.last_outcome is not None and widget.last_outcome.error is None, widget.last_outcome
    [labels] = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert labels.data.any()
    widget.export(folder=tmp_path / "export")
    seg_file = tmp_path / "export" / "output" / "chest_crop.seg.dcm"
    qtbot.waitUntil(lambda: getattr(widget, "last_export", None) is not None, timeout=60_000)
    assert seg_file in widget.last_export
    source = read_volume(small_ct_series)
    mhd = read_volume(tmp_path / "export" / "output" / "chest_crop.mhd")
    back = read_seg(seg_file, reference=source)
    np.testing.assert_array_equal(back.labels.array, mhd.array)
    np.testing.assert_array_equal(back.labels.array, labels.data)
    viewer.close()
    qtbot.waitUntil(lambda: not SERVERS.running(), timeout=30_000)
