"""The plugin in a real napari viewer (Xvfb + Mesa): manifest, reader, writers, sample data, menu, dock widget."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:  # napari draws with OpenGL: Qt's offscreen platform is not enough
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

from clara_napari.core.volume import read_volume, write_volume  # noqa: E402
from clara_napari.napari._geometry import KEY  # noqa: E402
from clara_napari.notebook import add_to_viewer, show  # noqa: E402

from helpers import assert_same_geometry, make_volume, oblique_volume  # noqa: E402
from helpers.dicom_series import SAGITTAL, write_tilted_series  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    """The widget's settings go to a temporary folder, never the user's."""
    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(tmp_path / "settings"))


def test_npe2_validate_passes():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "clara-napari", "--imports"],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_contributions():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("clara-napari")   # found through the napari.manifest entry point
    contributions = manifest.contributions
    patterns = {p for r in contributions.readers for p in r.filename_patterns}
    assert {"*.nii", "*.nii.gz", "*.mhd", "*.mha", "*.nrrd"} <= patterns
    assert any(r.accepts_directories for r in contributions.readers)
    assert {w.layer_types[0] for w in contributions.writers if len(w.layer_types) == 1} == {"labels", "image"}
    assert any(sorted(w.layer_types) == ["image", "labels"] for w in contributions.writers)
    assert {s.key for s in contributions.sample_data} == {"mr_t1", "chest_ct"}
    assert [w.display_name for w in contributions.widgets] == ["Triton Inference"]
    assert [item.command for item in contributions.menus["napari/layers/segment"]] == ["clara-napari.triton_widget"]


def test_dicom_series_folder_scale_and_labels_saved_on_the_series_grid(make_napari_viewer, tmp_path):
    """Acceptance 1: a DICOM folder opens with the series' spacing; labels made on it save on its exact grid."""
    folder = write_tilted_series(tmp_path / "series")
    series = read_volume(folder)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(folder), plugin="clara-napari")
    assert tuple(image.scale) == series.spacing[::-1]
    assert tuple(image.translate) == series.origin[::-1]
    assert [str(u) for u in image.units] == ["millimeter"] * 3
    assert image.metadata[KEY]["size"] == list(series.size)

    # a Labels layer made on it the way napari's "New labels layer" does: its transform, no metadata
    labels = viewer.add_labels(np.zeros(image.data.shape, dtype=np.int32), scale=image.scale, translate=image.translate,
                               rotate=image.rotate, units=image.units, axis_labels=image.axis_labels, name="painted")
    labels.data[1:4, 2:5, 3:7] = 2
    labels.refresh()
    viewer.layers.selection = {labels}
    written = viewer.layers.save(str(tmp_path / "painted.mhd"), selected=True, plugin="clara-napari")
    assert [p.endswith("painted.mhd") for p in written][-1]
    out = read_volume(tmp_path / "painted.mhd")
    assert out.size == series.size
    assert out.spacing == series.spacing
    assert out.origin == series.origin
    assert out.direction == series.direction
    expected = np.zeros(series.array.shape, np.uint8)
    expected[1:4, 2:5, 3:7] = 2
    assert np.array_equal(out.array, expected)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")   # napari's documented 2D limit for oblique layers
@pytest.mark.parametrize("kind", ["permuted", "oblique"])
def test_labels_land_on_their_voxels(make_napari_viewer, tmp_path, kind):
    """World positions (mm) of voxels read back the voxel's own image value and label, in the viewer."""

    volume = make_volume((6, 7, 8), spacing=(0.8, 1.1, 2.5), origin=(-5.0, 7.5, 20.0), direction=SAGITTAL) \
        if kind == "permuted" else oblique_volume(seed=4, shape=(6, 7, 8))
    path = write_volume(volume, tmp_path / "vol.mha")
    source = read_volume(path)
    labels_volume = source.with_array((np.arange(source.array.size).reshape(source.array.shape) % 5).astype(np.uint8))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="clara-napari")
    labels = add_to_viewer(viewer, labels_volume, kind="labels")
    assert np.array_equal(labels.rotate, image.rotate) and np.array_equal(labels.scale, image.scale)
    viewer.dims.ndisplay = 3   # oblique volumes are exact in 3D (2D shows each slice rotated in-plane only)
    sitk_image = source.to_sitk()
    rng = np.random.default_rng(0)
    for _ in range(25):
        index_xyz = tuple(int(rng.integers(0, n)) for n in source.size)
        world_zyx = np.asarray(sitk_image.TransformIndexToPhysicalPoint(index_xyz))[::-1]
        assert image.get_value(world_zyx, world=True) == source.array[index_xyz[::-1]]
        assert labels.get_value(world_zyx, world=True) == labels_volume.array[index_xyz[::-1]]
    # and the labels layer saves back onto the file's grid
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "labels.mhd"), selected=True, plugin="clara-napari")
    out = read_volume(tmp_path / "labels.mhd")
    assert_same_geometry(out, source)
    assert np.array_equal(out.array, labels_volume.array)


def test_sample_data_opens_with_geometry(make_napari_viewer, mr_t1_path):
    viewer = make_napari_viewer()
    viewer.open_sample("clara-napari", "mr_t1")
    [layer] = viewer.layers
    source = read_volume(mr_t1_path)
    assert layer.name == "mr_t1_colin27"
    assert tuple(layer.scale) == source.spacing[::-1] and tuple(layer.translate) == source.origin[::-1]
    assert layer.data.shape == source.array.shape


def test_publish_bundle_writer_from_the_viewer(make_napari_viewer, tmp_path):
    volume = make_volume((5, 6, 7), spacing=(0.9, 0.8, 3.3), origin=(4.0, -5.5, 66.0))
    path = write_volume(volume, tmp_path / "ct.nii.gz")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="clara-napari")
    labels = add_to_viewer(viewer, read_volume(path).with_array((volume.array > 500).astype(np.uint8)), kind="labels",
                           app="brain_extraction_t1")
    assert labels.features["name"].tolist() == ["background", "brain"]
    viewer.layers.selection = {image, labels}
    written = viewer.layers.save(str(tmp_path / "publish"), selected=True, plugin="clara-napari")
    assert sorted(p.split("/")[-1] for p in written) == sorted(
        ["ct.raw", "ct.out.raw", "ct.mhd", "ct.out.mhd", "config_render.json", "config.meta"])
    assert_same_geometry(read_volume(tmp_path / "publish" / "ct.out.mhd"), read_volume(path))


def test_show_puts_image_and_labels_in_the_viewer(make_napari_viewer, tmp_path):
    volume = make_volume((5, 6, 7), spacing=(0.9, 0.8, 3.3), direction=SAGITTAL)
    viewer = make_napari_viewer()
    image, labels = show(viewer, volume, volume.with_array((volume.array > 500).astype(np.uint8)), app="brain_extraction_t1")
    assert np.array_equal(image.scale, labels.scale) and np.array_equal(image.rotate, labels.rotate)
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0][:3], [v / 255 for v in (0xf5, 0xa6, 0x23)], atol=1e-6)
    from clara_napari.core.errors import VolumeError

    with pytest.raises(VolumeError, match="grid"):
        show(viewer, volume, make_volume((5, 6, 8)))


def test_menu_entry_and_dock_widget(make_napari_viewer):
    from napari._app_model import get_app_model

    from clara_napari.napari._widget import TritonInferenceWidget

    viewer = make_napari_viewer()
    app = get_app_model()
    commands = [getattr(getattr(item, "command", None), "id", None) for item in app.menus.get_menu("napari/layers/segment")]
    assert "clara-napari.triton_widget" in commands
    app.commands.execute_command("clara-napari.triton_widget").result()      # what Layers → Segment does
    assert [name for name in viewer.window.dock_widgets if name.startswith("Triton Inference")]
    dock, widget = viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
    assert isinstance(widget, TritonInferenceWidget) and widget.viewer is viewer
