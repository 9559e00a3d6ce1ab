"""Loading Clara ``config_inference.json`` files: every transform, every error class, the bundled app."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DEFAULT_APP, list_apps, resolve_app
from clara_napari.core.components import (
    INFERERS,
    MODEL_LOADERS,
    WRITERS,
    ScanWindowInferer,
    SimpleInferer,
    VolumeWriter,
)
from clara_napari.core.config import InferenceConfig, load_config
from clara_napari.core.errors import ConfigError
from clara_napari.core.pipeline import segment_volume
from clara_napari.core.transforms import TRAINING_ONLY, TRANSFORMS
from clara_napari.core.volume import Volume

from helpers import FunctionModel, bundled_config, dice

PLACEHOLDERS = {"MODEL_REPOSITORY": "/models"}


def load(tmp_path: Path, config, name: str = "config_inference.json") -> InferenceConfig:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return load_config(path, PLACEHOLDERS)


def config_error(tmp_path: Path, config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, config)
    error = info.value
    assert error.file == str(tmp_path / "config_inference.json")
    assert str(error).startswith(error.file)
    return error


# -- a config naming every registered transform, run on a synthetic volume --------------------
EVERY_TRANSFORM_CONFIG = {
    "batch_size": 1,
    "use_scanning_window": False,
    "pre_transforms": [
        {"name": "LoadNifti", "args": {"fields": "image", "as_closest_canonical": True}},
        {"name": "LoadImage", "args": {"fields": ["image"]}},
        {"name": "LoadVolume", "args": {"fields": "image", "dtype": "float32"}},
        {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}},
        {"name": "ScaleIntensityRange", "args": {"fields": "image", "a_min": 0.0, "a_max": 200.0,
                                                 "b_min": 0.0, "b_max": 1.0, "clip": True}},
        {"name": "ScaleIntensityPercentiles", "args": {"fields": ["image"], "lower": 1.0, "upper": 99.0}},
        {"name": "CenterData", "args": {"fields": "image"}},
        {"name": "NormalizeNonzeroIntensities", "args": {"fields": "image"}},
        {"name": "LinearIntensity", "args": {"fields": "image", "scale": 0.226, "offset": 0.449}},
        {"name": "ScaleByResolution", "args": {"fields": "image", "target_resolution": [1.0, 1.0, 1.0]}},
        {"name": "ScaleBySpacing", "args": {"fields": "image", "target_spacing": [1.25, 1.25, 1.25]}},
        {"name": "ScaleByFactor", "args": {"fields": "image", "scale_factor": 1.2}},
        {"name": "ScaleToShape", "args": {"fields": "image", "target_shape": [24, 24, 20]}},
    ],
    "inferer": {"name": "SimpleInferer", "args": {"model_name": "function_model"}},
    "post_transforms": [
        {"name": "SplitAcrossChannels", "args": {"field": "model", "channel_names": ["background", "foreground"]}},
        {"name": "ThresholdChannel", "args": {"fields": "foreground", "channel": 0, "threshold": 0.5, "value": 1}},
        {"name": "RemoveBorderConnected", "args": {"fields": ["foreground"], "include_z": True}},
        {"name": "ArgmaxAcrossChannels", "args": {"fields": "model", "dtype": "uint8"}},
        {"name": "KeepLargestCC", "args": {"fields": "model"}},
        {"name": "FillHoles", "args": {"field": "model", "connectivity": 1}},
        {"name": "SplitBasedOnLabel", "args": {"field": "model", "label_names": ["not_object", "object"]}},
        {"name": "CopyProperties", "args": {"fields": "object", "from_field": "foreground",
                                            "properties": ["affine", "original_affine"]}},
        {"name": "RestoreOriginalShape", "args": {"field": "model", "src_field": "image", "is_label": True}},
    ],
    "writers": [
        {"name": "WriteNifti", "args": {"field": "model", "dtype": "uint8"}},
        {"name": "WriteMetaImage", "args": {"field": "object", "dtype": "uint8", "format": "mha"}},
        {"name": "WriteMhd", "args": {"field": "foreground", "dtype": "int16"}},
        {"name": "WriteVolume", "args": {"field": "model", "dtype": "float32", "is_label": False}},
    ],
    "labels": {"1": {"name": "object", "color": "#FF8800"}},
}


def synthetic_scene() -> tuple[Volume, np.ndarray, np.ndarray]:
    """An LPS (identity direction) volume: a bright ball with a dark core, and a bright blob at the border.

    Returns the volume, the ball (filled) and the blob masks, in (z, y, x).
    """
    shape = (18, 20, 22)
    z, y, x = np.indices(shape)
    ball = ((z - 9) * 2.0) ** 2 + ((y - 10) * 1.25) ** 2 + ((x - 12) * 1.5) ** 2 <= 8.0 ** 2
    core = ((z - 9) * 2.0) ** 2 + ((y - 10) * 1.25) ** 2 + ((x - 12) * 1.5) ** 2 <= 2.5 ** 2
    blob = (z < 3) & (y < 3) & (x < 3)
    array = np.full(shape, 10.0, np.float32)
    array[ball | blob] = 110.0
    array[core] = 10.0
    volume = Volume(array, spacing=(1.5, 1.25, 2.0), origin=(-20.5, 11.25, 3.125))
    return volume, ball, blob


def midpoint_model() -> FunctionModel:
    """Whole-volume 'model': foreground where the preprocessed intensity is above its mid-range."""
    def fn(batch):
        middle = (batch.min() + batch.max()) / 2
        fg = (batch[:, :1] > middle).astype(np.float32)
        return np.concatenate([1.0 - fg, fg], axis=1)
    return FunctionModel(fn)


def test_config_uses_every_registered_transform():
    used = {spec["name"] for key in ("pre_transforms", "post_transforms") for spec in EVERY_TRANSFORM_CONFIG[key]}
    from clara_napari.core.transforms.monai_style import MONAI_STYLE_NAMES  # tested in test_monai_style.py

    missing = sorted(set(TRANSFORMS.names()) - used - MONAI_STYLE_NAMES)
    assert not missing, f"transforms without a config test: {missing} (add them to EVERY_TRANSFORM_CONFIG)"
    volume_writers = {name for name in WRITERS.names()
                      if issubclass(WRITERS.get(name), VolumeWriter) and name not in MONAI_STYLE_NAMES}
    assert {spec["name"] for spec in EVERY_TRANSFORM_CONFIG["writers"]} == volume_writers


def test_every_transform_loads_and_runs(tmp_path):
    config = load(tmp_path, EVERY_TRANSFORM_CONFIG)
    assert [t.config_name for t in config.pre_transforms] == [s["name"] for s in EVERY_TRANSFORM_CONFIG["pre_transforms"]]
    assert [t.config_name for t in config.post_transforms] == [s["name"] for s in EVERY_TRANSFORM_CONFIG["post_transforms"]]
    assert config.skipped == [] and not config.scanning and isinstance(config.inferer, SimpleInferer)
    assert config.labels[1].color == "#ff8800" and config.label_names() == {1: "object"}

    volume, ball, blob = synthetic_scene()
    model = midpoint_model()
    result = segment_volume(volume, config, model)
    assert model.calls == 1  # one whole-volume request
    assert len(result.outputs) == 4
    labels = result.labels
    # back on the input grid exactly, as the writer's dtype
    assert labels.same_grid(volume) and labels.array.dtype == np.uint8
    assert set(np.unique(labels.array)) <= {0, 1}
    # the ball survives preprocessing, resampling, reorientation and the way back …
    assert dice(labels.array, ball) > 0.85
    # … with its dark core filled (FillHoles) and without the separate blob (KeepLargestCC)
    assert labels.array[9, 10, 12] == 1
    assert not labels.array[blob].any()

    by_field = {writer.field + ":" + writer.dtype: out for writer, out in result.outputs}
    obj = by_field["object:uint8"]
    foreground = by_field["foreground:int16"]
    assert obj.same_grid(volume) and foreground.same_grid(volume)
    assert foreground.array.dtype == np.int16
    # RemoveBorderConnected dropped the blob touching the border, kept the ball
    assert not foreground.array[blob].any()
    assert dice(foreground.array, ball & ~blob) > 0.6
    # the split label agrees with the model labels where both exist
    assert dice(obj.array, labels.array) > 0.9
    assert by_field["model:float32"].array.dtype == np.float32


def test_every_inferer_model_loader_and_writer_name_builds(tmp_path):
    for name in INFERERS.names():
        config = copy.deepcopy(EVERY_TRANSFORM_CONFIG)
        config["inferer"] = {"name": name, "args": {"model_name": "m"}}
        loaded = load(tmp_path, config)
        assert loaded.inferer.config_name == name and loaded.model_name == "m"
        assert loaded.scanning == (isinstance(loaded.inferer, ScanWindowInferer) and loaded.use_scanning_window)
    for name in MODEL_LOADERS.names():
        if MODEL_LOADERS.get(name).__name__ != "TritonModelLoader":
            continue  # Clara Train's own loaders are mapped to a Triton model (test_mmar.py)
        config = copy.deepcopy(EVERY_TRANSFORM_CONFIG)
        config["model_loader"] = {"name": name, "args": {"model_spec_file_name": "{PBTXT_PATH}"}}
        config["inferer"]["args"]["model_name"] = "brain"
        loaded = load(tmp_path, config)
        assert loaded.model_loader.model_spec_file_name == str(Path("/models") / "brain" / "config.pbtxt")


def test_fields_as_string_or_list(tmp_path):
    config = copy.deepcopy(EVERY_TRANSFORM_CONFIG)
    config["pre_transforms"][3]["args"]["fields"] = "image"
    as_string = load(tmp_path, config).pre_transforms[3]
    config["pre_transforms"][3]["args"]["fields"] = ["image", "label"]
    as_list = load(tmp_path, config).pre_transforms[3]
    assert as_string.fields == ["image"]
    assert as_list.fields == ["image", "label"]
    config["pre_transforms"][3]["args"].pop("fields")
    assert load(tmp_path, config).pre_transforms[3].fields == ["image"]


def test_writers_default_to_one_label_writer(tmp_path):
    config = copy.deepcopy(EVERY_TRANSFORM_CONFIG)
    del config["writers"]
    writers = load(tmp_path, config).writers
    assert len(writers) == 1 and writers[0].field == "model" and writers[0].dtype == "uint8"


# -- error classes ---------------------------------------------------------------------------
def test_invalid_json_names_line_and_column(tmp_path):
    text = '{\n  "batch_size": 1,\n  "pre_transforms": [\n    {"name": "LoadNifti",}\n  ]\n}\n'
    error = config_error(tmp_path, text)
    assert "not valid JSON" in str(error)
    assert "line 4" in str(error) and "column 26" in str(error)
    assert error.json_path == ""


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")


@pytest.mark.parametrize("top", ["[]", "3", '"text"', "null"])
def test_top_level_must_be_an_object(tmp_path, top):
    error = config_error(tmp_path, top)
    assert "top level must be a JSON object" in str(error)


def test_unknown_transform_name_suggests_closest(tmp_path):
    config = bundled_config()
    config["pre_transforms"][1]["name"] = "ConvertToChanelsFirst"
    error = config_error(tmp_path, config)
    assert error.json_path == "pre_transforms[1].name"
    assert "Did you mean 'ConvertToChannelsFirst'" in str(error)


def test_unknown_arg_suggests_closest(tmp_path):
    config = bundled_config()
    config["pre_transforms"][2]["args"]["uper"] = 99.0
    error = config_error(tmp_path, config)
    assert error.json_path == "pre_transforms[2].args.uper"
    assert "unknown arg 'uper'" in str(error) and "Did you mean 'upper'" in str(error)


def test_unknown_arg_without_close_match_lists_known_args(tmp_path):
    config = bundled_config()
    config["post_transforms"][1]["args"]["zzz"] = 1
    error = config_error(tmp_path, config)
    assert error.json_path == "post_transforms[1].args.zzz"
    assert "num_components" in str(error)


def test_missing_required_arg(tmp_path):
    config = bundled_config()
    config["pre_transforms"].append({"name": "ScaleIntensityRange", "args": {"a_min": -1000.0}})
    error = config_error(tmp_path, config)
    assert error.json_path == f"pre_transforms[{len(config['pre_transforms']) - 1}].args.a_max"
    assert "required" in str(error)


@pytest.mark.parametrize("key, index, arg, value, path, got", [
    ("pre_transforms", 2, "lower", "0.5", "pre_transforms[2].args.lower", "(got '0.5')"),
    ("pre_transforms", 2, "clip", "yes", "pre_transforms[2].args.clip", "(got 'yes')"),
    ("pre_transforms", 2, "upper", True, "pre_transforms[2].args.upper", "(got True)"),
    ("post_transforms", 2, "fields", 3, "post_transforms[2].args.fields", "(got 3)"),
    ("post_transforms", 2, "fields", ["model", 3], "post_transforms[2].args.fields[1]", "(got 3)"),
    ("post_transforms", 0, "dtype", "uint9", "post_transforms[0].args.dtype", "(got 'uint9')"),
])
def test_wrongly_typed_arg(tmp_path, key, index, arg, value, path, got):
    config = bundled_config()
    config[key][index]["args"][arg] = value
    error = config_error(tmp_path, config)
    assert error.json_path == path
    assert got in str(error)


def test_validator_errors_carry_the_args_path(tmp_path):
    config = bundled_config()
    config["pre_transforms"].append({"name": "ScaleIntensityRange", "args": {"a_min": 1.0, "a_max": 1.0}})
    error = config_error(tmp_path, config)
    assert error.json_path == f"pre_transforms[{len(config['pre_transforms']) - 1}].args"
    assert "a_max must differ from a_min" in str(error)


def test_unknown_placeholder(tmp_path):
    config = bundled_config()
    config["model_loader"]["args"]["model_spec_file_name"] = "{MODEL_REPO}/x/config.pbtxt"
    error = config_error(tmp_path, config)
    assert error.json_path == "model_loader.args.model_spec_file_name"
    assert "{MODEL_REPO}" in str(error) and "MODEL_REPOSITORY" in str(error)


def test_training_only_names_are_skipped_with_a_warning(tmp_path, caplog):
    config = bundled_config()
    config["pre_transforms"].insert(1, {"name": "RandomZoom", "args": {"probability": 0.5}})
    config["pre_transforms"].insert(3, {"name": "CropByPosNegRatio", "args": {}})
    with caplog.at_level(logging.WARNING, logger="clara_napari"):
        loaded = load(tmp_path, config)
    assert loaded.skipped == ["RandomZoom", "CropByPosNegRatio"]
    assert [t.config_name for t in loaded.pre_transforms] == [s["name"] for s in bundled_config()["pre_transforms"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("RandomZoom" in w and "pre_transforms[1]" in w for w in warnings)
    assert any("CropByPosNegRatio" in w and "pre_transforms[3]" in w for w in warnings)
    # the skip list names no transform that inference would need
    assert not set(TRAINING_ONLY) & set(TRANSFORMS.names())


def test_missing_inferer(tmp_path):
    config = bundled_config()
    del config["inferer"]
    error = config_error(tmp_path, config)
    assert error.json_path == "inferer"


@pytest.mark.parametrize("labels, path", [
    ({"zero": "brain"}, "labels.zero"),
    ({"0": "background"}, "labels.0"),
    ({"70000": "x"}, "labels.70000"),
    ({"1": {"name": "brain", "color": "red"}}, "labels.1.color"),
    ({"1": {"name": "brain", "colour": "#ffffff"}}, "labels.1.colour"),
    ({"1": {"name": 3}}, "labels.1.name"),
    ({"1": 5}, "labels.1"),
    (["brain"], "labels"),
])
def test_bad_labels(tmp_path, labels, path):
    config = bundled_config()
    config["labels"] = labels
    error = config_error(tmp_path, config)
    assert error.json_path == path


def test_labels_as_plain_names_get_default_colours(tmp_path):
    config = bundled_config()
    config["labels"] = {"2": "right lung", "1": {"name": "left lung", "color": "#00FF00"}}
    loaded = load(tmp_path, config)
    assert list(loaded.labels) == [1, 2]
    assert loaded.label_names() == {1: "left lung", 2: "right lung"}
    colours = loaded.label_table().colors()
    assert colours[1] == "#00ff00" and colours[2].startswith("#") and len(colours[2]) == 7


@pytest.mark.parametrize("mutate, path", [
    (lambda c: c.update(pre_transforms={"name": "LoadNifti"}), "pre_transforms"),
    (lambda c: c["pre_transforms"].append("LoadNifti"), f"pre_transforms[{len(bundled_config()['pre_transforms'])}]"),
    (lambda c: c["pre_transforms"][0].update(arguments={}), "pre_transforms[0].arguments"),
    (lambda c: c["pre_transforms"][0].update(name=7), "pre_transforms[0].name"),
    (lambda c: c["pre_transforms"][0].update(args=["image"]), "pre_transforms[0].args"),
    (lambda c: c.update(batch_size=0), "batch_size"),
    (lambda c: c.update(use_scanning_window="yes"), "use_scanning_window"),
    (lambda c: c["inferer"]["args"].update(roi_size=[160, 160]), "inferer.args.roi_size"),
    (lambda c: c["inferer"]["args"].update(overlap=1.0), "inferer.args.overlap"),
    (lambda c: c["inferer"].update(name="TRTISScanWindowInfer"), "inferer.name"),
    (lambda c: c["writers"][0]["args"].update(format="png"), "writers[0].args.format"),
])
def test_structural_errors_name_their_path(tmp_path, mutate, path):
    config = bundled_config()
    mutate(config)
    assert config_error(tmp_path, config).json_path == path


def test_unknown_top_level_keys_are_ignored_with_a_warning(tmp_path, caplog):
    config = bundled_config()
    config["epochs"] = 100          # training-only: info
    config["pre_transform"] = []    # a typo: warning
    with caplog.at_level(logging.INFO, logger="clara_napari"):
        load(tmp_path, config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pre_transform" in w for w in warnings)
    assert not any("epochs" in w for w in warnings)


# -- the bundled app -------------------------------------------------------------------------
def test_bundled_app_loads():
    app = resolve_app("brain_extraction_t1")
    assert app.name == "brain_extraction_t1" == DEFAULT_APP
    assert app.config_path.is_file()
    config = app.config
    assert config.model_name == "deepbet_brain_t1"
    assert config.scanning and config.inferer.roi_size == [160, 160, 160]
    assert config.label_names() == {1: "brain"}
    assert (app.model_repository / "deepbet_brain_t1" / "config.pbtxt").is_file()
    assert Path(config.model_loader.model_spec_file_name) == app.model_repository / "deepbet_brain_t1" / "config.pbtxt"
    assert config.skipped == []
    assert "brain_extraction_t1" in [a.name for a in list_apps()]


def test_resolve_app_by_folder_and_by_file(tmp_path):
    folder = tmp_path / "my_app"
    folder.mkdir()
    (folder / "config_inference.json").write_text(json.dumps(bundled_config()))
    (folder / "other.json").write_text(json.dumps(bundled_config()))
    assert resolve_app(folder).folder == folder.resolve()
    by_file = resolve_app(folder / "other.json")
    assert by_file.config_path == (folder / "other.json").resolve()
    assert by_file.config.model_name == "deepbet_brain_t1"
    with pytest.raises(ConfigError, match="brain_extraction_t1"):
        resolve_app("no_such_app")
    with pytest.raises(ConfigError, match="no config_inference.json"):
        resolve_app(tmp_path)



def test_every_bundled_app_loads_and_names_a_model_it_has():
    apps = list_apps()
    assert apps
    for app in apps:
        config = app.config
        assert (app.model_repository / config.model_name / "config.pbtxt").is_file(), app.name
        assert config.skipped == [] and config.writers and config.labels, app.name
