"""The napari plugin's reader, writers and layer geometry, without a viewer (npe2 hands plain data + dicts).

Round trips go file → layer data/kwargs → (what napari would give a writer) → file, and must give
back the source grid bit for bit: size, spacing, origin, direction, voxels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clara_napari.core.volume import read_volume, write_volume
from clara_napari.napari._geometry import (
    KEY,
    closest_axes,
    geometry_from_transform,
    layer_to_volume,
    smallest_label_dtype,
    volume_to_layer,
)
from clara_napari.napari._reader import get_reader, read_layers
from clara_napari.napari._sample_data import chest_ct, mr_t1
from clara_napari.napari._writer import write_bundle, write_image, write_labels

from helpers import assert_same_geometry, make_volume, oblique_volume, random_rotation
from helpers.dicom_series import SAGITTAL, write_tilted_series


def napari_attributes(kwargs: dict) -> dict:
    """What napari's ``layer.as_layer_data_tuple()`` hands a writer for a layer made from ``kwargs``."""
    return {
        "scale": list(kwargs["scale"]), "translate": list(kwargs["translate"]),
        "rotate": [list(r) for r in kwargs["rotate"]], "shear": [0.0, 0.0, 0.0],
        "affine": np.eye(4), "metadata": kwargs["metadata"], "name": kwargs["name"],
    }


def world_point(kwargs: dict, index_zyx) -> np.ndarray:
    """napari's data → world mapping (rotate @ (scale * index) + translate)."""
    return np.asarray(kwargs["rotate"]) @ (np.asarray(kwargs["scale"]) * np.asarray(index_zyx, float)) + kwargs["translate"]


# -- geometry --------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),     # NIfTI RAS read as LPS
    SAGITTAL,
    (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0),
])
def test_layer_maps_every_voxel_to_its_physical_point(direction):
    volume = make_volume((4, 5, 6), spacing=(0.7, 1.3, 2.9), origin=(-11.5, 20.25, 3.125), direction=direction)
    data, kwargs = volume_to_layer(volume)
    image = volume.to_sitk()
    axes = closest_axes(direction)
    for index_xyz in [(0, 0, 0), (5, 4, 3), (2, 1, 3), (5, 0, 2)]:
        expected = np.asarray(image.TransformIndexToPhysicalPoint(index_xyz))[::-1]   # (z, y, x)
        shown = [index_xyz[axes[w]] for w in range(3)]                               # data index, (x, y, z)
        np.testing.assert_allclose(world_point(kwargs, shown[::-1]), expected, atol=1e-9)
        assert data[tuple(shown[::-1])] == volume.array[tuple(index_xyz[::-1])]
    # axis-aligned volumes are shown with a diagonal rotate (exact 2D slicing in napari)
    rotate = np.asarray(kwargs["rotate"])
    assert np.array_equal(rotate, np.diag(np.diag(rotate)))
    assert kwargs["units"] == ("mm", "mm", "mm") and kwargs["axis_labels"] == ("z", "y", "x")


def test_oblique_volume_keeps_its_grid_and_exact_rotation():
    volume = oblique_volume(seed=3)
    data, kwargs = volume_to_layer(volume)
    image = volume.to_sitk()
    axes = closest_axes(volume.direction)
    assert kwargs["metadata"][KEY]["oblique"] is True
    for index_xyz in [(0, 0, 0), (6, 5, 4), (3, 2, 1)]:
        expected = np.asarray(image.TransformIndexToPhysicalPoint(index_xyz))[::-1]
        shown = [index_xyz[axes[w]] for w in range(3)]
        np.testing.assert_allclose(world_point(kwargs, shown[::-1]), expected, atol=1e-9)
    # never resampled: the layer holds exactly the source voxels
    assert sorted(data.ravel().tolist()) == sorted(volume.array.ravel().tolist())
    back = layer_to_volume(data, napari_attributes(kwargs))
    assert_same_geometry(back, volume)
    assert np.array_equal(back.array, volume.array)


@given(seed=st.integers(0, 10_000))
def test_any_rotation_round_trips_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    volume = make_volume((3, 4, 5), dtype=np.float32, spacing=tuple(rng.uniform(0.1, 5.0, 3)),
                         origin=tuple(rng.uniform(-500, 500, 3)), direction=random_rotation(rng).ravel(), seed=seed)
    data, kwargs = volume_to_layer(volume)
    back = layer_to_volume(data, napari_attributes(kwargs))
    assert_same_geometry(back, volume)
    assert np.array_equal(back.array, volume.array)
    # without the metadata, the transform alone gives the same physical grid
    spacing, origin, direction = geometry_from_transform({k: v for k, v in kwargs.items() if k != "metadata"})
    assert origin == volume.origin
    axes = closest_axes(volume.direction)
    assert spacing == tuple(volume.spacing[a] for a in axes)


def test_a_changed_transform_wins_over_stale_metadata():
    volume = make_volume((3, 4, 5))
    data, kwargs = volume_to_layer(volume)
    attributes = napari_attributes(kwargs)
    attributes["scale"] = [9.0, 9.0, 9.0]
    back = layer_to_volume(data, attributes)
    assert back.spacing == (9.0, 9.0, 9.0) and back.origin == volume.origin


def test_sheared_layers_are_refused():
    from clara_napari.core.errors import VolumeError

    with pytest.raises(VolumeError, match="shear"):
        geometry_from_transform({"scale": [1, 1, 1], "translate": [0, 0, 0], "rotate": np.eye(3), "shear": [0.5, 0, 0]})


def test_label_dtype_is_the_smallest_that_fits():
    assert smallest_label_dtype(np.array([0, 1, 2], np.int64)) == np.uint8
    assert smallest_label_dtype(np.array([0, 300], np.int32)) == np.uint16
    assert smallest_label_dtype(np.array([-1, 3], np.int64)) == np.int8
    assert smallest_label_dtype(np.zeros(3, bool)) == np.uint8


# -- reader ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mhd", ".mha", ".nrrd"])
def test_reader_reads_every_format_with_geometry(tmp_path, suffix):
    volume = make_volume((4, 5, 6), spacing=(0.5, 0.75, 3.0), origin=(1.5, -2.25, 40.0), direction=SAGITTAL)
    path = write_volume(volume, tmp_path / f"vol{suffix}")
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "vol"
    source = read_volume(path)
    back = layer_to_volume(data, napari_attributes(kwargs))
    assert_same_geometry(back, source)
    assert np.array_equal(back.array, source.array)


@pytest.mark.parametrize("target", ["missing.nii.gz", "notes.txt", "folder_without_dicom", "empty.mhd", ["a.nii", "b.nii"],
                                    "", None, 42, ["one_missing.nii"]])
def test_get_reader_never_raises(tmp_path, target):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder_without_dicom").mkdir()
    (tmp_path / "folder_without_dicom" / "x.txt").write_text("x")
    (tmp_path / "empty.mhd").write_text("")
    if isinstance(target, str) and target:
        target = str(tmp_path / target)
    elif isinstance(target, list):
        target = [str(tmp_path / t) for t in target]
    reader = get_reader(target)
    assert reader is None or target == str(tmp_path / "empty.mhd")   # a .mhd is claimed; reading it then fails


def test_reader_reports_broken_files_when_reading(tmp_path):
    from clara_napari.core.errors import VolumeError

    (tmp_path / "broken.mhd").write_text("NDims = 3\nDimSize = 2 2\n")
    reader = get_reader(str(tmp_path / "broken.mhd"))
    with pytest.raises(VolumeError):
        reader(str(tmp_path / "broken.mhd"))


def test_sample_data_has_its_geometry(mr_t1_path, chest_ct_path):
    for layers, path in ((mr_t1(), mr_t1_path), (chest_ct(), chest_ct_path)):
        [(data, kwargs, kind)] = layers
        source = read_volume(path)
        assert kind == "image"
        assert tuple(kwargs["scale"]) == tuple(source.spacing[::-1])
        assert tuple(kwargs["translate"]) == tuple(source.origin[::-1])
        back = layer_to_volume(data, napari_attributes(kwargs))
        assert_same_geometry(back, source)


# -- writers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), SAGITTAL, None])
@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
def test_labels_writer_restores_the_source_grid_bit_for_bit(tmp_path, direction, suffix):
    source = oblique_volume(seed=11) if direction is None else \
        make_volume((5, 6, 7), spacing=(0.3333333333333333, 0.7071067811865476, 2.5), origin=(-0.1, 1e-7, 123.456789),
                    direction=direction)
    path = write_volume(source, tmp_path / "source.nii.gz")
    [(data, kwargs, _)] = read_layers(str(path))
    labels = (data > np.median(data)).astype(np.int32) * 2          # napari's default labels dtype is int
    written = write_labels(str(tmp_path / f"labels{suffix}"), labels, napari_attributes(kwargs))
    header = Path(written[-1])
    assert header.name == f"labels{suffix}"
    out = read_volume(header)
    assert_same_geometry(out, read_volume(path))
    assert out.array.dtype == np.uint8
    expected = (read_volume(path).array > np.median(data)).astype(np.uint8) * 2
    assert np.array_equal(out.array, expected)


def test_labels_writer_without_metadata_uses_the_layer_transform(tmp_path):
    source = make_volume((5, 6, 7), spacing=(0.9, 0.8, 3.3), origin=(4.0, -5.5, 66.0))
    path = write_volume(source, tmp_path / "source.mhd")
    [(data, kwargs, _)] = read_layers(str(path))
    attributes = napari_attributes(kwargs)
    attributes["metadata"] = {}                                   # napari's "New labels layer" copies no metadata
    write_labels(str(tmp_path / "labels"), np.ones(data.shape, np.int64), attributes)   # no extension → .mhd
    out = read_volume(tmp_path / "labels.mhd")
    assert_same_geometry(out, source)


def test_image_writer_never_overwrites_its_source(tmp_path):
    from clara_napari.core.errors import VolumeError

    path = write_volume(make_volume(), tmp_path / "source.mhd")
    [(data, kwargs, _)] = read_layers(str(path))
    with pytest.raises(VolumeError, match="input"):
        write_image(str(path), data, napari_attributes(kwargs))
    copy = write_image(str(tmp_path / "copy.mha"), data, napari_attributes(kwargs))
    out = read_volume(copy[-1])
    assert_same_geometry(out, read_volume(path))
    assert np.array_equal(out.array, read_volume(path).array)


def test_bundle_writer_writes_the_publish_bundle(tmp_path):
    source = make_volume((5, 6, 7), spacing=(0.9, 0.8, 3.3), origin=(4.0, -5.5, 66.0), direction=SAGITTAL)
    path = write_volume(source, tmp_path / "ct.nii.gz")
    [(data, kwargs, _)] = read_layers(str(path))
    labels_attrs = napari_attributes(kwargs)
    labels_attrs["metadata"] = {}
    labels_attrs["name"] = "ct labels"
    labels = (data > 500).astype(np.int32)
    written = write_bundle(str(tmp_path / "publish"), [(data, napari_attributes(kwargs), "image"),
                                                       (labels, labels_attrs, "labels")])
    names = sorted(Path(p).name for p in written)
    assert names == sorted(["ct.raw", "ct.out.raw", "ct.mhd", "ct.out.mhd", "config_render.json", "config.meta"])
    meta = json.loads((tmp_path / "publish" / "config.meta").read_text())
    assert meta["density"] == "ct.mhd" and meta["seg_masks"] == ["ct.out.mhd"]
    density, mask = read_volume(tmp_path / "publish" / "ct.mhd"), read_volume(tmp_path / "publish" / "ct.out.mhd")
    original = read_volume(path)
    assert_same_geometry(density, original)
    assert_same_geometry(mask, original)
    assert np.array_equal(density.array, original.array)
    assert np.array_equal(mask.array, (original.array > 500).astype(np.uint8))
    assert json.loads((tmp_path / "publish" / "config_render.json").read_text())["TransferFunction"]["components"]


def test_bundle_writer_refuses_layers_on_different_grids(tmp_path):
    from clara_napari.core.errors import VolumeError

    data, kwargs = volume_to_layer(make_volume((5, 6, 7)))
    other, other_kwargs = volume_to_layer(make_volume((5, 6, 8)))
    with pytest.raises(VolumeError, match="grid"):
        write_bundle(str(tmp_path / "publish"), [(data, napari_attributes(kwargs), "image"),
                                                 (other.astype(np.uint8), napari_attributes(other_kwargs), "labels")])


def test_dicom_series_folder_is_claimed_and_read(tmp_path):
    folder = write_tilted_series(tmp_path / "series")
    reader = get_reader(str(folder))
    assert reader is not None
    [(data, kwargs, _)] = reader(str(folder))
    series = read_volume(folder)
    assert tuple(kwargs["scale"]) == tuple(series.spacing[::-1])
    assert_same_geometry(layer_to_volume(data, napari_attributes(kwargs)), series)
