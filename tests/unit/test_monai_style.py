"""Clara 4 (MONAI-style) inference names on the project's numpy/SimpleITK engine."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from clara_napari.core.components import INFERERS, WRITERS, SaveImaged, SlidingWindowInferer
from clara_napari.core.config import CLARA4, parse_config
from clara_napari.core.errors import ConfigError
from clara_napari.core.geometry import Grid
from clara_napari.core.pipeline import segment_volume
from clara_napari.core.transforms import TRANSFORMS, Sample
from clara_napari.core.transforms.monai_style import MONAI_STYLE_NAMES
from clara_napari.core.transforms.spatial import LoadNifti

from helpers import assert_same_geometry, make_volume, oblique_volume, threshold_model

EVERY_MONAI_CONFIG = {
    "model": {"ts_path": "{MMAR_TORCHSCRIPT}"},
    "pre_transforms": [
        {"name": "LoadImaged", "args": {"keys": ["image", "label"]}},
        {"name": "LoadNiftid", "args": {"keys": "image"}},
        {"name": "EnsureChannelFirstd", "args": {"keys": ["image", "label"]}},
        {"name": "AddChanneld", "args": {"keys": "image"}},
        {"name": "Orientationd", "args": {"keys": "image", "axcodes": "RAS"}},
        {"name": "Spacingd", "args": {"keys": ["image", "label"], "pixdim": [1.5, 1.25, 2.0],
                                      "mode": ["bilinear", "nearest"]}},
        {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": 0, "a_max": 200, "b_min": 0.0,
                                                  "b_max": 1.0, "clip": True}},
        {"name": "CropForegroundd", "args": {"keys": "image", "source_key": "image", "margin": 1}},
        {"name": "NormalizeIntensityd", "args": {"keys": "image", "nonzero": True, "channel_wise": True}},
        {"name": "ToTensord", "args": {"keys": ["image", "label"]}},
        {"name": "EnsureTyped", "args": {"keys": "image"}},
        {"name": "ToNumpyd", "args": {"keys": "image"}},
    ],
    "inferer": {"name": "SlidingWindowInferer", "args": {"roi_size": [8, 8, 8], "sw_batch_size": 2, "overlap": 0.5,
                                                         "mode": "gaussian"}},
    "post_transforms": [
        {"name": "Activationsd", "args": {"keys": "pred", "softmax": True}},
        {"name": "Invertd", "args": {"keys": "pred", "transform": "@pre_transforms", "orig_keys": "image",
                                     "nearest_interp": False, "to_tensor": True, "device": "cuda"}},
        {"name": "AsDiscreted", "args": {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2,
                                         "n_classes": 2}},
        {"name": "KeepLargestConnectedComponentd", "args": {"keys": "pred", "applied_labels": [1]}},
        {"name": "SaveImaged", "args": {"keys": "pred", "output_dir": "{MMAR_EVAL_OUTPUT_PATH}", "resample": False,
                                        "squeeze_end_dims": True}},
    ],
    "evaluator": {"name": "SupervisedEvaluator", "args": {"amp": "{amp}"}},
}


def load(raw=None, **kw):
    return parse_config(copy.deepcopy(raw or EVERY_MONAI_CONFIG), file="config_inference.json",
                        placeholders={"MODEL_REPOSITORY": "/m"}, model="function_model", **kw)


def test_every_monai_style_name_is_used_here():
    used = {s["name"] for k in ("pre_transforms", "post_transforms") for s in EVERY_MONAI_CONFIG[k]}
    used.add(EVERY_MONAI_CONFIG["inferer"]["name"])
    assert used == set(MONAI_STYLE_NAMES)
    assert all(n in TRANSFORMS or n in INFERERS or n in WRITERS for n in MONAI_STYLE_NAMES)


def test_every_monai_style_name_loads_and_runs_with_exact_geometry():
    config = load()
    assert config.format == CLARA4 and config.output_field == "pred"
    assert "evaluator" in config.skipped_sections and "model" in config.skipped_sections
    assert config.skipped == ["key 'label' (absent at inference)"]
    assert [type(w) for w in config.writers] == [SaveImaged] and config.writers[0].field == "pred"
    volume = oblique_volume(seed=3, shape=(14, 15, 16))
    result = segment_volume(volume, config, threshold_model(0.0))
    labels = result.labels
    assert_same_geometry(labels, volume)
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) <= {0, 1}


def test_sliding_window_inferer_maps_monai_args():
    inferer = load().inferer
    assert isinstance(inferer, SlidingWindowInferer) and inferer.scanning
    assert (inferer.blending, inferer.batch_size, inferer.overlap, inferer.roi_size) == ("gaussian", 2, 0.5, [8, 8, 8])
    raw = copy.deepcopy(EVERY_MONAI_CONFIG)
    raw["inferer"]["args"].update(cval=-1.0, mode="constant")
    inferer = load(raw).inferer
    assert (inferer.pad_value, inferer.blending) == (-1.0, "constant")


def _sample(volume):
    sample = Sample(image=volume)
    TRANSFORMS.get("LoadImaged")(keys=["image"])(sample)
    TRANSFORMS.get("EnsureChannelFirstd")(keys=["image"])(sample)
    return sample


def test_orientation_ras_matches_clara3_closest_canonical():
    volume = make_volume((5, 6, 7), spacing=(0.7, 0.9, 1.3), direction=(-1, 0, 0, 0, 0, 1, 0, -1, 0))
    sample = _sample(volume)
    TRANSFORMS.get("Orientationd")(keys="image", axcodes="RAS")(sample)
    reference = Sample(image=volume)
    LoadNifti(fields=["image"], as_closest_canonical=True)(reference)
    np.testing.assert_array_equal(sample["image"][0], reference["image"])
    assert sample.meta["image"].grid == reference.meta["image"].grid


def test_spacingd_matches_scale_by_spacing():
    volume = make_volume((9, 10, 11), dtype=np.float32)
    sample = _sample(volume)
    TRANSFORMS.get("Spacingd")(keys="image", pixdim=[1.5, 1.6])(sample)   # z keeps its spacing
    reference = _sample(volume)
    TRANSFORMS.get("ScaleBySpacing")(fields=["image"], target_spacing=[1.5, 1.6, volume.spacing[2]])(reference)
    np.testing.assert_array_equal(sample["image"], reference["image"])
    assert sample.meta["image"].grid.spacing == (1.5, 1.6, volume.spacing[2])


def test_crop_foreground_then_invert_is_exact():
    array = np.zeros((12, 13, 14), np.int16)
    array[3:8, 4:9, 5:11] = np.arange(5 * 5 * 6).reshape(5, 5, 6) + 1
    volume = oblique_volume(seed=11, shape=(12, 13, 14)).with_array(array)
    sample = _sample(volume)
    TRANSFORMS.get("CropForegroundd")(keys="image", source_key="image")(sample)
    assert sample["image"].shape == (1, 6, 5, 5)       # (x, y, z) of the box
    grid: Grid = sample.meta["image"].grid
    assert grid.spacing == volume.spacing and grid.direction == volume.direction
    sample.put("pred", sample["image"].astype(np.uint8) % 7, sample.meta["image"].copy(is_label=True))
    TRANSFORMS.get("Invertd")(keys="pred", orig_keys="image", nearest_interp=True)(sample)
    back = sample["pred"][0].transpose(2, 1, 0)
    np.testing.assert_array_equal(back, (array % 7).astype(np.uint8))


def test_normalize_intensity_matches_numpy():
    volume = make_volume((4, 5, 6), dtype=np.float32)
    array = volume.array.copy()
    array[0] = 0
    sample = _sample(volume.with_array(array))
    TRANSFORMS.get("NormalizeIntensityd")(keys="image", nonzero=True)(sample)
    values = array[array != 0]
    expected = np.where(array != 0, (array - values.mean()) / values.std(), 0).transpose(2, 1, 0)
    np.testing.assert_allclose(sample["image"][0], expected, rtol=1e-5, atol=1e-5)
    sample = _sample(volume)
    TRANSFORMS.get("NormalizeIntensityd")(keys="image", subtrahend=10.0, divisor=2.0)(sample)
    np.testing.assert_allclose(sample["image"][0], (volume.array.transpose(2, 1, 0) - 10) / 2, rtol=1e-6)


def test_activations_and_as_discrete():
    logits = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    volume = make_volume((6, 5, 4))
    sample = _sample(volume)
    sample.put("pred", logits.copy(), sample.meta["image"].copy())
    TRANSFORMS.get("Activationsd")(keys="pred", softmax=True)(sample)
    np.testing.assert_allclose(sample["pred"].sum(axis=0), 1.0, rtol=1e-5)
    TRANSFORMS.get("AsDiscreted")(keys="pred", argmax=True, to_onehot=True, n_classes=3)(sample)
    np.testing.assert_array_equal(sample["pred"][0], np.argmax(logits, axis=0))
    assert sample.meta["pred"].is_label
    sample.put("pred", logits[:1].copy(), sample.meta["image"].copy())
    TRANSFORMS.get("Activationsd")(keys="pred", sigmoid=True)(sample)
    TRANSFORMS.get("AsDiscreted")(keys="pred", threshold_values=True, logit_thresh=0.5)(sample)
    np.testing.assert_array_equal(sample["pred"], (logits[:1] >= 0).astype(np.uint8))


def test_keep_largest_connected_component():
    labels = np.zeros((1, 10, 10, 10), np.uint8)
    labels[0, 1:4, 1:4, 1:4] = 1          # 27 voxels
    labels[0, 6:8, 6:8, 6:8] = 1          # 8 voxels: removed
    labels[0, 8, 0, 0] = 2                # another label, alone: kept
    volume = make_volume((10, 10, 10))
    sample = _sample(volume)
    sample.put("pred", labels, sample.meta["image"].copy(is_label=True))
    TRANSFORMS.get("KeepLargestConnectedComponentd")(keys="pred")(sample)
    assert (sample["pred"] == 1).sum() == 27 and (sample["pred"] == 2).sum() == 1


@pytest.mark.parametrize("entry, path", [
    ({"name": "Activationsd", "args": {"keys": "pred", "other": "lambda x: x"}}, "post_transforms[0].args.other"),
    ({"name": "Invertd", "args": {"keys": "pred", "post_func": "lambda x: x"}}, "post_transforms[0].args.post_func"),
    ({"name": "Invertd", "args": {"keys": "pred", "transform": "@train_transforms"}},
     "post_transforms[0].args.transform"),
    ({"name": "Spacingd", "args": {"keys": "image", "pixdim": [1, 1, 1, 1]}}, "post_transforms[0].args.pixdim"),
    ({"name": "SaveImaged", "args": {"keys": ["pred", "label"]}}, "post_transforms[0].args.keys"),
])
def test_code_and_bad_args_are_refused(entry, path):
    raw = copy.deepcopy(EVERY_MONAI_CONFIG)
    raw["post_transforms"] = [entry]
    with pytest.raises(ConfigError) as info:
        load(raw)
    assert info.value.json_path == path


def test_save_imaged_output_dir_and_ext(tmp_path):
    raw = copy.deepcopy(EVERY_MONAI_CONFIG)
    raw["post_transforms"][-1]["args"].update(output_dir="{MMAR_EVAL_OUTPUT_PATH}/seg", output_ext=".nii.gz")
    writer = load(raw).writers[0]
    assert writer.target(tmp_path, "ct", 0) == tmp_path / "seg" / "ct.nii.gz"
    raw["post_transforms"][-1]["args"].update(output_dir="/etc")
    writer = load(raw).writers[0]
    with pytest.raises(ConfigError) as info:
        writer.target(tmp_path, "ct", 0)
    assert info.value.json_path == "post_transforms[4].args.output_dir"
