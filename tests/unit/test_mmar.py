"""Clara Train MMAR folders as apps: config/, environment.json placeholders, the model mapped to Triton."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import bundled_model_repository, resolve_app
from clara_napari.core.errors import ConfigError

from helpers import assert_same_geometry, t1_crop

PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published_configs"


def mmar(tmp_path: Path, source: str = "clara3_spleen_getting_started", *, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a published MMAR's config/ folder, with a models/ folder holding its (absent) model."""
    folder = tmp_path / source
    shutil.copytree(PUBLISHED / source, folder)
    for name in drop:
        (folder / "config" / name).unlink()
    (folder / "models").mkdir()
    (folder / "models" / "README").write_text("the model file the MMAR names would be here\n")
    return folder


def test_an_mmar_folder_is_an_app(tmp_path):
    folder = mmar(tmp_path)
    app = resolve_app(folder)
    assert app.mmar and app.folder == folder.resolve()
    assert app.config_path == (folder / "config" / "config_validation.json").resolve()
    # models/ holds model files, not a Triton repository: the bundled repository serves the model
    assert app.model_repository == bundled_model_repository()


def test_config_inference_is_preferred_to_config_validation(tmp_path):
    app = resolve_app(mmar(tmp_path, "clara4_spleen_getting_started"))
    assert app.config_path.name == "config_inference.json"


def test_a_config_file_inside_an_mmar_reads_its_environment(tmp_path):
    folder = mmar(tmp_path)
    app = resolve_app(folder / "config" / "config_validation_chpt.json")
    assert app.mmar and app.folder == folder.resolve()
    values = app.placeholders()
    assert values["MMAR_CKPT_DIR"] == str(folder.resolve() / "models")       # environment.json, from the MMAR root
    assert values["DATA_ROOT"] == "/claraDevDay/sampleData/"
    assert "MMAR_EVAL_OUTPUT_PATH" not in values                            # writers use --output, never 'eval'


def test_the_mmar_model_is_mapped_to_the_named_triton_model(tmp_path):
    app = dataclasses.replace(resolve_app(mmar(tmp_path)), model="deepbet_brain_t1")
    config = app.config
    assert config.model_name == "deepbet_brain_t1" and config.model_loader is None
    assert config.source_model == "FrozenGraphModelLoader (model.trt.pb)"
    note = config.model_note()
    assert "\n" not in note and "FrozenGraphModelLoader (model.trt.pb)" in note and "'deepbet_brain_t1'" in note
    assert "from --model" in note


def test_the_clara4_torchscript_model_is_mapped(tmp_path):
    folder = mmar(tmp_path, "clara4_spleen_getting_started")
    config = dataclasses.replace(resolve_app(folder), model="deepbet_brain_t1").config
    assert config.source_model == f"model ts_path {folder.resolve() / 'models' / 'model.ts'}"  # {MMAR_TORCHSCRIPT}


def test_the_inferer_model_name_is_used_without_model(tmp_path):
    folder = mmar(tmp_path)
    path = folder / "config" / "config_validation.json"
    raw = json.loads(path.read_text())
    raw["inferer"] = {"name": "TRTISScanWindowInferer", "args": {"model_name": "deepbet_brain_t1", "roi_size": [64] * 3}}
    path.write_text(json.dumps(raw))
    config = resolve_app(folder).config
    assert config.model_name == "deepbet_brain_t1" and "the inferer's model_name" in config.model_note()


def test_mmar_ckpt_dir_is_known_without_an_environment(tmp_path):
    folder = mmar(tmp_path, drop=("environment.json",))
    (folder / "config" / "config_validation_chpt.json").unlink()
    app = dataclasses.replace(resolve_app(folder), model="deepbet_brain_t1")
    assert not app.mmar or app.environment() == {}
    config = app.config   # {MMAR_CKPT_DIR} comes from the named model's folder in the repository
    assert config.source_model == "FrozenGraphModelLoader (model.trt.pb)"


def test_no_model_anywhere_is_refused_before_any_work(tmp_path, monkeypatch, capsys, restore_root_logging):
    folder = mmar(tmp_path)
    out = tmp_path / "out"
    inputs = tmp_path / "in"
    inputs.mkdir()
    code = main(["run", "--app", str(folder), "--server", "local", "--input", str(inputs), "--output", str(out),
                 "--no-publish", "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2 and "inferer.args.model_name" in err and "--model NAME" in err and "FrozenGraphModelLoader" in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"MMAR_CKPT_DIR": ' * 3000])
def test_a_broken_environment_is_a_config_error(tmp_path, text):
    folder = mmar(tmp_path)
    (folder / "config" / "environment.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        _ = resolve_app(folder).config
    assert info.value.file == str(folder.resolve() / "config" / "environment.json")


def test_environment_values_are_only_text(tmp_path):
    """environment.json can name paths, never make anything be read or run: non-text values are ignored."""
    folder = mmar(tmp_path)
    (folder / "config" / "environment.json").write_text(json.dumps({"MMAR_CKPT_DIR": {"x": 1}, "PBTXT_PATH": 3}))
    assert resolve_app(folder).environment() == {}


def test_a_folder_without_any_config_names_both_layouts(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_app(tmp_path)
    assert "config_inference.json" in str(info.value) and "config/config_validation.json" in str(info.value)


def test_api_takes_model(tmp_path):
    """cn.segment(..., model=) on a published Clara 4 MMAR, in process (a crop of the real T1)."""
    volume = t1_crop(slice(40, 104), slice(60, 124), slice(50, 114))
    labels = cn.segment(volume, PUBLISHED / "clara4_ea_spleen_getting_started", server="local",
                        model="deepbet_brain_t1")
    assert_same_geometry(labels, volume)
    assert set(labels.array.ravel().tolist()) <= {0, 1}


def test_a_model_given_with_model_takes_its_own_window_and_batch_limit(caplog):
    """The config's roi_size/batch were for its own model: a --model with fixed dims and a smaller batch wins."""
    import numpy as np

    from clara_napari.core.config import parse_config
    from clara_napari.core.model_repository import ModelSpec, TensorSpec
    from clara_napari.core.pipeline import segment_volume

    from helpers import FunctionModel, make_volume

    shapes = []

    def fn(batch):
        shapes.append(batch.shape)
        return np.concatenate([1.0 - (batch > 500), (batch > 500)], axis=1).astype(np.float32)

    model = FunctionModel(fn, max_batch_size=2)
    model.input, model.output = TensorSpec("x", "FP32", (1, 6, 6, 6)), TensorSpec("y", "FP32", (2, 6, 6, 6))
    model.spec = ModelSpec("function_model", "onnxruntime_onnx", "", 2, (model.input,), (model.output,))
    raw = {"pre_transforms": [{"name": "LoadNifti", "args": {"fields": "image"}},
                              {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}}],
           "inferer": {"name": "TFScanWindowInferer", "args": {"roi_size": [8, 8, 8], "batch_size": 4}},
           "post_transforms": [{"name": "ArgmaxAcrossChannels", "args": {"fields": "model"}}]}
    config = parse_config(raw, file="config_validation.json", placeholders={}, model="function_model")
    volume = make_volume((9, 10, 11))
    labels = segment_volume(volume, config, model).labels
    assert_same_geometry(labels, volume)
    assert shapes and all(s[0] <= 2 and s[2:] == (6, 6, 6) for s in shapes)
    np.testing.assert_array_equal(labels.array, (volume.array > 500).astype(np.uint8))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "windows of [6, 6, 6]" in messages and "batches of 2 at most" in messages
    # without --model the config's own roi_size stands (and a mismatch is the model's error, as before)
    config = parse_config(raw, file="config_validation.json", placeholders={})
    assert config.model_override == "" and config.inferer.roi_size == [8, 8, 8]


def test_mmar_ckpt_dir_without_model_or_environment_is_the_app_models_folder(tmp_path):
    """A lone Clara 3 config naming {MMAR_CKPT_DIR}: it loads; only the missing model is refused (at run)."""
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(PUBLISHED / "clara3_spleen_getting_started/config/config_validation.json",
                folder / "config_inference.json")
    app = resolve_app(folder)
    config = app.config
    assert not app.mmar and config.model_name == "" and config.source_model.startswith("FrozenGraphModelLoader")
    with pytest.raises(ConfigError) as info:
        config.require_model()
    assert info.value.json_path == "inferer.args.model_name"
