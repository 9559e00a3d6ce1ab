"""The maths of the Clara transforms, and the exact way back onto the input grid."""
from __future__ import annotations

import numpy as np
import pytest

from clara_napari.core.components import VolumeWriter
from clara_napari.core.config import parse_config
from clara_napari.core.errors import ConfigError
from clara_napari.core.geometry import Grid, orientation
from clara_napari.core.pipeline import segment_volume
from clara_napari.core.transforms import FieldMeta, Sample
from clara_napari.core.transforms.intensity import (
    CenterData,
    LinearIntensity,
    NormalizeNonzeroIntensities,
    ScaleIntensityPercentiles,
    ScaleIntensityRange,
)
from clara_napari.core.transforms.labels import (
    ArgmaxAcrossChannels,
    FillHoles,
    KeepLargestCC,
    RemoveBorderConnected,
    SplitAcrossChannels,
    SplitBasedOnLabel,
    ThresholdChannel,
)
from clara_napari.core.transforms.spatial import (
    ConvertToChannelsFirst,
    CopyProperties,
    LoadNifti,
    RestoreOriginalShape,
    ScaleByFactor,
    ScaleByResolution,
    ScaleBySpacing,
    ScaleToShape,
)
from clara_napari.core.volume import Volume

from helpers import make_volume, oblique_volume, random_rotation, threshold_model

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def sample_of(array: np.ndarray, key: str = "image", grid: Grid | None = None, is_label: bool = False) -> Sample:
    grid = grid or Grid(tuple(array.shape[-3:]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    sample = Sample()
    sample.put(key, array, FieldMeta(grid=grid, is_label=is_label, original=grid))
    return sample


def run(transform, array: np.ndarray, key: str = "image") -> np.ndarray:
    sample = sample_of(array, key)
    transform(sample)
    return sample[key]


# -- intensity -------------------------------------------------------------------------------
def test_scale_intensity_range_without_clip_is_linear_everywhere():
    values = np.array([-1000.0, 0.0, 500.0, 1000.0, 3000.0], np.float32).reshape(1, 5, 1, 1)
    out = run(ScaleIntensityRange(a_min=0.0, a_max=1000.0, b_min=-1.0, b_max=1.0), values)
    np.testing.assert_allclose(out.ravel(), [-3.0, -1.0, 0.0, 1.0, 5.0], rtol=1e-6)
    assert out.dtype == np.float32


def test_scale_intensity_range_with_clip():
    values = np.array([-1000.0, 0.0, 500.0, 1000.0, 3000.0], np.float32).reshape(1, 5, 1, 1)
    out = run(ScaleIntensityRange(a_min=0.0, a_max=1000.0, b_min=-1.0, b_max=1.0, clip=True), values)
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, 0.0, 1.0, 1.0], rtol=1e-6)
    # an inverted target range clips to its own bounds too
    out = run(ScaleIntensityRange(a_min=0.0, a_max=1000.0, b_min=1.0, b_max=0.0, clip=True), values)
    np.testing.assert_allclose(out.ravel(), [1.0, 1.0, 0.5, 0.0, 0.0], rtol=1e-6)


def test_scale_intensity_range_accepts_integer_input():
    out = run(ScaleIntensityRange(a_min=-1000, a_max=1000), np.array([-1000, 0, 1000], np.int16).reshape(1, 3, 1, 1))
    np.testing.assert_allclose(out.ravel(), [0.0, 0.5, 1.0])
    assert out.dtype == np.float32


def test_scale_intensity_percentiles():
    values = np.linspace(0.0, 100.0, 1001, dtype=np.float32).reshape(1, 11, 91, 1)
    out = run(ScaleIntensityPercentiles(lower=10.0, upper=90.0, b_min=0.0, b_max=1.0, clip=True), values)
    flat, src = out.ravel(), values.ravel()
    np.testing.assert_allclose(flat[src <= 10.0], 0.0, atol=1e-6)
    np.testing.assert_allclose(flat[src >= 90.0], 1.0, atol=1e-6)
    middle = (src > 10.0) & (src < 90.0)
    np.testing.assert_allclose(flat[middle], (src[middle] - 10.0) / 80.0, atol=1e-5)
    unclipped = run(ScaleIntensityPercentiles(lower=10.0, upper=90.0, clip=False), values).ravel()
    assert unclipped.min() == pytest.approx(-0.125, abs=1e-5) and unclipped.max() == pytest.approx(1.125, abs=1e-5)


def test_scale_intensity_percentiles_of_a_constant_volume():
    out = run(ScaleIntensityPercentiles(b_min=0.25, b_max=1.0), np.full((1, 3, 4, 5), 7.0, np.float32))
    assert np.all(out == 0.25)


def test_center_data():
    rng = np.random.default_rng(0)
    out = run(CenterData(), rng.normal(50.0, 12.0, size=(1, 10, 11, 12)).astype(np.float32))
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, abs=1e-5)
    flat = run(CenterData(), np.full((1, 2, 3, 4), 5.0, np.float32))
    assert np.all(flat == 0.0)


def test_normalize_nonzero_intensities_per_channel():
    rng = np.random.default_rng(1)
    array = rng.normal(0.0, 1.0, size=(2, 8, 8, 8)).astype(np.float32)
    array[0] = array[0] * 10.0 + 100.0
    array[1] = array[1] * 3.0 - 40.0
    array[:, :4] = 0.0  # a zero background in both channels
    out = run(NormalizeNonzeroIntensities(), array)
    assert np.all(out[:, :4] == 0.0)
    for channel in out:
        values = channel[4:]
        assert values.mean() == pytest.approx(0.0, abs=1e-5)
        assert values.std() == pytest.approx(1.0, abs=1e-4)
    # the input is not modified in place
    assert array[0, 4:].mean() == pytest.approx(100.0, abs=1.0)


def test_linear_intensity():
    out = run(LinearIntensity(scale=0.226, offset=0.449), np.array([0.0, 1.0, -2.0], np.float32).reshape(1, 3, 1, 1))
    np.testing.assert_allclose(out.ravel(), [0.449, 0.675, 0.449 - 0.452], atol=1e-6)


# -- labels ----------------------------------------------------------------------------------
def test_argmax_across_channels():
    rng = np.random.default_rng(2)
    scores = rng.random((3, 5, 6, 7)).astype(np.float32)
    sample = sample_of(scores, "model")
    ArgmaxAcrossChannels(fields=["model"], dtype="uint8")(sample)
    assert sample["model"].shape == (1, 5, 6, 7) and sample["model"].dtype == np.uint8
    np.testing.assert_array_equal(sample["model"][0], np.argmax(scores, axis=0))
    assert sample.meta["model"].is_label
    # a single probability map (no channel axis) is thresholded at 0.5
    probabilities = np.array([0.1, 0.5, 0.51, 0.9], np.float32).reshape(4, 1, 1)
    out = run(ArgmaxAcrossChannels(fields=["model"]), probabilities, "model")
    np.testing.assert_array_equal(out.ravel(), [0, 0, 1, 1])


def test_threshold_channel():
    probabilities = np.stack([np.full((2, 2, 2), 0.5), np.array([0.2, 0.7] * 4).reshape(2, 2, 2)]).astype(np.float32)
    out = run(ThresholdChannel(fields=["model"], channel=1, threshold=0.5, value=3), probabilities, "model")
    np.testing.assert_array_equal(out[0], np.where(probabilities[1] > 0.5, 3, 0))
    with pytest.raises(ConfigError, match="no channel 2"):
        run(ThresholdChannel(fields=["model"], channel=2), probabilities, "model")


def test_keep_largest_cc_per_label():
    labels = np.zeros((1, 12, 12, 12), np.uint8)
    labels[0, 1:5, 1:5, 1:5] = 1      # 64 voxels of label 1
    labels[0, 8:10, 8:10, 8:10] = 1   # 8 voxels of label 1, separate
    labels[0, 1:3, 8:11, 1:3] = 2     # 12 voxels of label 2
    labels[0, 10, 1, 10] = 2          # 1 voxel of label 2, separate
    out = run(KeepLargestCC(fields=["model"]), labels, "model")
    expected = labels.copy()
    expected[0, 8:10, 8:10, 8:10] = 0
    expected[0, 10, 1, 10] = 0
    np.testing.assert_array_equal(out, expected)
    two = run(KeepLargestCC(fields=["model"], num_components=2), labels, "model")
    np.testing.assert_array_equal(two, labels)


def test_keep_largest_cc_min_size_ratio():
    labels = np.zeros((1, 20, 10, 10), np.uint8)
    labels[0, 1:8, 1:8, 1:8] = 1       # 343 voxels ("left lung")
    labels[0, 10:16, 1:8, 1:8] = 1     # 294 voxels ("right lung")
    labels[0, 18, 8, 8] = 1            # 1 voxel (a bubble)
    both = run(KeepLargestCC(fields=["model"], num_components=3, min_size_ratio=0.1), labels, "model")
    expected = labels.copy()
    expected[0, 18, 8, 8] = 0
    np.testing.assert_array_equal(both, expected)
    only_large = run(KeepLargestCC(fields=["model"], num_components=2, min_size_ratio=0.9), labels, "model")
    assert only_large[0, 1:8, 1:8, 1:8].all() and not only_large[0, 10:].any()


def test_keep_largest_cc_connectivity():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 1
    labels[2, 2, 2] = 1               # touches the cube only at a corner
    six = run(KeepLargestCC(fields=["model"], connectivity=1), labels, "model")
    assert six[2, 2, 2] == 0 and six[0:2, 0:2, 0:2].all()
    corner = run(KeepLargestCC(fields=["model"], connectivity=3), labels, "model")
    np.testing.assert_array_equal(corner, labels)


@pytest.mark.parametrize("channels_first", [False, True])
def test_fill_holes(channels_first):
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[3:6, 3:6, 3:6] = 0          # enclosed cavity: filled
    labels[4, 4, 0:2] = 0              # a tunnel from the border into the shell's wall: not a hole
    labels[2:4, 2:4, 0] = 0
    expected = labels.copy()
    expected[3:6, 3:6, 3:6] = 1
    array = labels[None] if channels_first else labels
    out = run(FillHoles(fields=["model"]), array, "model")
    np.testing.assert_array_equal(out[0] if channels_first else out, expected)


def test_fill_holes_keeps_other_labels_inside():
    labels = np.zeros((1, 9, 9, 9), np.uint8)
    labels[0, 1:8, 1:8, 1:8] = 2       # an outer label …
    labels[0, 3:5, 3:6, 3:6] = 1       # … enclosing another one with a lower value: it stays
    labels[0, 6, 6, 6] = 0             # … and a hole of the outer label: filled with 2
    out = run(FillHoles(field="model"), labels, "model")
    expected = labels.copy()
    expected[0, 6, 6, 6] = 2
    np.testing.assert_array_equal(out, expected)


def test_remove_border_connected():
    labels = np.zeros((1, 10, 10, 6), np.uint8)
    labels[0, 0:3, 4:6, 2:4] = 1       # touches the x = 0 face
    labels[0, 4:6, 4:6, 2:4] = 1       # inside
    labels[0, 4:6, 7:10, 2:4] = 1      # touches the y = max face
    labels[0, 8, 1, 0] = 2             # touches only the z = 0 face
    out = run(RemoveBorderConnected(fields=["model"]), labels, "model")
    expected = np.zeros_like(labels)
    expected[0, 4:6, 4:6, 2:4] = 1
    expected[0, 8, 1, 0] = 2
    np.testing.assert_array_equal(out, expected)
    with_z = run(RemoveBorderConnected(fields=["model"], include_z=True), labels, "model")
    expected[0, 8, 1, 0] = 0
    np.testing.assert_array_equal(with_z, expected)


def test_split_based_on_label():
    labels = np.array([0, 1, 2, 2, 1, 0, 2, 2], np.uint8).reshape(1, 2, 2, 2)
    sample = sample_of(labels, "model", is_label=True)
    SplitBasedOnLabel(field="model", label_names=["background", "liver", "tumour"])(sample)
    for value, name in enumerate(["background", "liver", "tumour"]):
        assert sample[name].dtype == np.uint8 and sample.meta[name].is_label
        np.testing.assert_array_equal(sample[name], (labels == value).astype(np.uint8))
    np.testing.assert_array_equal(sample["model"], labels)


def test_split_across_channels():
    scores = np.arange(3 * 2 * 3 * 4, dtype=np.float32).reshape(3, 2, 3, 4)
    sample = sample_of(scores, "model")
    SplitAcrossChannels(field="model", channel_names=["a", "b", "c"])(sample)
    for index, name in enumerate("abc"):
        np.testing.assert_array_equal(sample[name], scores[index:index + 1])
        assert sample.meta[name].grid == sample.meta["model"].grid
    with pytest.raises(ConfigError, match="3 channels, 4 names"):
        SplitAcrossChannels(field="model", channel_names=list("abcd"))(sample_of(scores, "model"))


def test_sample_errors_name_the_field():
    with pytest.raises(ConfigError, match="no field 'label'"):
        ConvertToChannelsFirst(fields=["label"])(sample_of(np.zeros((2, 2, 2)), "image"))
    sample = Sample(image=make_volume())
    with pytest.raises(ConfigError, match="not loaded yet"):
        ConvertToChannelsFirst(fields=["image"])(sample)


# -- resampling and the way back -------------------------------------------------------------
def loaded(volume: Volume, key: str = "image", **load_args) -> Sample:
    sample = Sample(**{key: volume})
    LoadNifti(fields=[key], **load_args)(sample)
    ConvertToChannelsFirst(fields=[key])(sample)
    return sample


def test_grid_sizes_and_spacings():
    grid = Grid((20, 30, 10), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), IDENTITY)
    assert grid.with_spacing((2.0, 0.5, 1.5)).size == (10, 60, 20)
    assert grid.with_size((40, 15, 30)).spacing == (0.5, 2.0, 1.0)
    sample = loaded(Volume(np.zeros((10, 30, 20), np.float32), spacing=(1.0, 1.0, 3.0)))
    ScaleByFactor(fields=["image"], scale_factor=[2.0, 0.5, 1.0])(sample)
    assert sample["image"].shape == (1, 40, 15, 10) and sample.meta["image"].grid.size == (40, 15, 10)
    ScaleToShape(fields=["image"], target_shape=[8, 9, 7])(sample)
    assert sample["image"].shape == (1, 8, 9, 7)
    ScaleBySpacing(fields=["image"], target_spacing=[5.0, 5.0, 5.0])(sample)
    assert sample.meta["image"].grid.spacing == (5.0, 5.0, 5.0)
    assert sample.meta["image"].original == Grid.of(Volume(np.zeros((10, 30, 20)), spacing=(1.0, 1.0, 3.0)))


@pytest.mark.parametrize("oblique", [False, True])
def test_scale_by_resolution_then_restore_gives_the_original_grid_exactly(oblique):
    volume = oblique_volume(3, shape=(9, 11, 13)) if oblique else make_volume((9, 11, 13), dtype=np.float32,
                                                                              spacing=(0.7, 1.1, 2.3))
    sample = loaded(volume)
    original = sample.meta["image"].grid
    ScaleByResolution(fields=["image"], target_resolution=[1.9, 0.6, 1.3])(sample)
    assert sample.meta["image"].grid.spacing == (1.9, 0.6, 1.3)
    assert sample["image"].shape[1:] == sample.meta["image"].grid.size != original.size
    # a label map computed on the resampled grid goes back onto the input grid exactly
    sample.put("model", (sample["image"] > 100).astype(np.uint8), sample.meta["image"].copy(is_label=True))
    RestoreOriginalShape(field="model", src_field="image")(sample)
    assert sample.meta["model"].grid == original == Grid.of(volume)
    assert sample["model"].shape == (1,) + original.size
    assert sample["model"].dtype == np.uint8


def test_upsample_and_restore_is_lossless():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint8)
    volume = Volume(labels, spacing=(2.0, 2.0, 2.0), origin=(-3.5, 7.25, 100.0))
    sample = loaded(volume, dtype="uint8")
    ScaleByResolution(fields=["image"], target_resolution=[1.0, 0.5, 1.0], is_label=True)(sample)
    assert sample["image"].shape == (1, 16, 28, 12) and sample["image"].dtype == np.uint8
    sample.put("model", sample["image"].copy(), sample.meta["image"].copy(is_label=True))
    RestoreOriginalShape(field="model", src_field="image")(sample)
    np.testing.assert_array_equal(sample["model"][0], labels.transpose(2, 1, 0))


def test_restore_of_an_image_interpolates_linearly():
    x = np.arange(10, dtype=np.float32)
    ramp = np.broadcast_to(x[None, None, :], (4, 5, 10)).copy()  # (z, y, x): a ramp along x
    sample = loaded(Volume(ramp, spacing=(1.0, 1.0, 1.0)))
    ScaleByResolution(fields=["image"], target_resolution=[0.5, 1.0, 1.0])(sample)
    inner = sample["image"][0, :19, 0, 0]
    np.testing.assert_allclose(inner, np.arange(19) / 2.0, atol=1e-5)
    RestoreOriginalShape(field="image", src_field="image", is_label=False)(sample)
    np.testing.assert_allclose(sample["image"][0], ramp.transpose(2, 1, 0), atol=1e-5)


def test_copy_properties_needs_the_same_size():
    sample = loaded(make_volume((4, 5, 6), dtype=np.float32))
    sample.put("model", np.zeros((1, 3, 3, 3), np.float32), sample.meta["image"].copy())
    with pytest.raises(ConfigError, match="resample before copying"):
        CopyProperties(fields=["model"], from_field="image")(sample)


def test_load_nifti_as_closest_canonical_flips_lps_to_ras():
    volume = make_volume((4, 5, 6), dtype=np.int16, spacing=(0.5, 0.75, 2.0), origin=(10.0, -20.0, 30.0))
    assert orientation(volume.direction) == "LPS"
    sample = loaded(volume, as_closest_canonical=True)
    meta = sample.meta["image"]
    assert orientation(meta.grid.direction) == "RAS"
    assert meta.grid.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert meta.grid.spacing == volume.spacing and meta.grid.size == volume.size
    # the first voxel is now the input's last in x and y: same physical point, exactly
    assert meta.grid.origin == (10.0 + 5 * 0.5, -20.0 + 4 * 0.75, 30.0)
    xyz = volume.array.transpose(2, 1, 0)
    np.testing.assert_array_equal(sample["image"][0], xyz[::-1, ::-1, :].astype(np.float32))
    assert meta.original == Grid.of(volume)
    # without it the array keeps the input's axes
    plain = loaded(volume)
    np.testing.assert_array_equal(plain["image"][0], xyz.astype(np.float32))
    assert plain.meta["image"].grid == Grid.of(volume)


@pytest.mark.parametrize("direction", ["LPS", "RAS", "oblique", "permuted"])
def test_pipeline_restores_labels_onto_the_right_voxels(direction):
    rng = np.random.default_rng(5)
    array = np.zeros((10, 12, 14), np.float32)
    array[1:4, 2:5, 3:11] = 100.0      # an asymmetric block: any wrong flip moves it
    array[7, 9, 12] = 100.0
    matrix = {"LPS": np.eye(3), "RAS": np.diag([-1.0, -1.0, 1.0]), "oblique": random_rotation(rng),
              "permuted": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}[direction]
    volume = Volume(array, spacing=(0.9, 1.3, 2.1), origin=(-5.5, 6.25, 17.0), direction=matrix.ravel())
    config = parse_config({
        "pre_transforms": [{"name": "LoadNifti", "args": {"as_closest_canonical": True}},
                           {"name": "ConvertToChannelsFirst", "args": {}}],
        "inferer": {"name": "ScanWindowInferer", "args": {"roi_size": [8, 8, 8], "overlap": 0.25}},
        "post_transforms": [{"name": "ArgmaxAcrossChannels", "args": {"fields": "model"}},
                            {"name": "RestoreOriginalShape", "args": {"field": "model", "src_field": "image"}}],
    })
    result = segment_volume(volume, config, threshold_model(50.0))
    labels = result.labels
    assert labels.same_grid(volume) and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, (array > 50).astype(np.uint8))


def test_writer_restores_geometry_without_restore_transform():
    # no RestoreOriginalShape in the config: the writer step brings the labels back by itself
    volume = make_volume((8, 9, 10), dtype=np.float32, spacing=(1.0, 1.0, 1.0))
    config = parse_config({
        "pre_transforms": [{"name": "LoadNifti", "args": {"as_closest_canonical": True}},
                           {"name": "ScaleByResolution", "args": {"target_resolution": [0.5, 0.5, 0.5]}}],
        "inferer": {"name": "SimpleInferer", "args": {}},
        "post_transforms": [{"name": "ArgmaxAcrossChannels", "args": {"fields": "model"}}],
    })
    result = segment_volume(volume, config, threshold_model(100.0))
    assert result.labels.same_grid(volume)
    agreement = np.mean(result.labels.array == (volume.array > 100))
    assert agreement > 0.9
    assert isinstance(result.outputs[0][0], VolumeWriter)
