"""Real published Clara configs (tests/data/published_configs, cited in its README), run unchanged.

Only the model is swapped (``--model``): the bundled deepbet network on the T1 MRI, the bundled
air-density model on the chest CT. The outputs must land in ``--output`` (never the working or
the input folder) with the input's geometry exactly. One test per finding of issue 14 follows.

The whole-volume runs are in tests/integration/test_published_configs_runs.py.
"""
from __future__ import annotations

import json
import logging

import pytest

from clara_napari.core.apps import resolve_app
from clara_napari.core.config import AIAA, CLARA3, CLARA4, load_config, parse_config
from clara_napari.core.errors import ConfigError, ConfigProblems

from helpers import bundled_config
from helpers.published_configs import AIAA_CONFIGS, PUBLISHED, REFUSED, RUNNABLE, T1, _run


def test_every_published_config_is_covered():
    files = {str(p.relative_to(PUBLISHED)) for p in PUBLISHED.glob("*/config/*.json") if p.name != "environment.json"}
    covered = {c[0] for c in RUNNABLE} | {c[0] for c in REFUSED} | {c[0] for c in AIAA_CONFIGS}
    assert files == covered
    readme = (PUBLISHED / "README.md").read_text(encoding="utf-8")
    assert all(f"`{folder}`" in readme for folder in {f.split("/")[0] for f in files})


@pytest.mark.parametrize("config, fmt, model, kind, fields", RUNNABLE, ids=[c[0].split("/")[0] + "/" + c[0].split("/")[-1]
                                                                            for c in RUNNABLE])
def test_published_config_loads_with_only_the_model_given(config, fmt, model, kind, fields):
    app = resolve_app(PUBLISHED / config)
    assert app.mmar and app.folder == (PUBLISHED / config).parents[1]
    import dataclasses

    loaded = dataclasses.replace(app, model=model).config
    assert loaded.format == fmt and loaded.model_name == model
    assert [w.field for w in loaded.writers] == fields
    assert loaded.source_model  # what the config itself named, now served by Triton


# -- finding 1: writers write inside --output, never elsewhere -------------------------------------------
@pytest.mark.parametrize("write_path, inside", [
    ("{MMAR_EVAL_OUTPUT_PATH}", ""), ("{MMAR_EVAL_OUTPUT_PATH}/seg", "seg"), ("eval", "eval"), ("", ""),
])
def test_finding1_writer_paths_resolve_inside_the_output_folder(tmp_path, write_path, inside):
    config = bundled_config()
    config["writers"][0]["args"]["write_path"] = write_path
    path = tmp_path / "config_inference.json"
    path.write_text(json.dumps(config))
    writer = load_config(path, {"MODEL_REPOSITORY": "/models"}).writers[0]
    out = tmp_path / "out"
    assert writer.target(out, "ct", 0) == (out / inside / "ct.mhd" if inside else out / "ct.mhd")


@pytest.mark.parametrize("write_path", ["{MMAR_EVAL_OUTPUT_PATH}/../elsewhere", "/tmp", "..", "x/{MMAR_EVAL_OUTPUT_PATH}"])
def test_finding1_a_writer_path_outside_the_output_folder_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                                     restore_root_logging, capsys,
                                                                                     write_path):
    config = bundled_config()
    config["writers"][0]["args"]["write_path"] = write_path
    app = tmp_path / "app"
    app.mkdir()
    (app / "config_inference.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code = _run(["run", "--app", str(app), "--server", "local", "--input", str(T1), "--output", str(out),
                 "--no-publish", "--logs", str(tmp_path / "logs")], tmp_path / "cwd", monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "writers[0].args.write_path" in err and "outside the output folder" in err
    assert not out.exists()


def test_finding1_a_link_out_of_the_output_folder_is_refused(tmp_path):
    config = bundled_config()
    config["writers"][0]["args"]["write_path"] = "link"
    path = tmp_path / "config_inference.json"
    path.write_text(json.dumps(config))
    writer = load_config(path, {"MODEL_REPOSITORY": "/models"}).writers[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ConfigError) as info:
        writer.target(out, "ct", 0)
    assert info.value.json_path == "writers[0].args.write_path"


# -- finding 3: only the used sections are checked; the others are listed ---------------------------------
def test_finding3_placeholders_in_unused_sections_are_not_checked(caplog):
    raw = json.loads((PUBLISHED / "clara4_spleen_fl/config/config_validation.json").read_text())
    # its environment.json defines no MMAR_TORCHSCRIPT, DATASET_JSON is used by 'dataset' only, {amp} by 'evaluator'
    with caplog.at_level(logging.INFO, logger="clara_napari"):
        config = parse_config(raw, file="config_validation.json", placeholders={}, model="m")
    assert {"model", "dataset", "dataloader", "handlers", "evaluator"} <= set(config.skipped_sections)
    assert "key 'label' (absent at inference)" in config.skipped
    assert any("not used at inference" in r.getMessage() and "'evaluator'" in r.getMessage() for r in caplog.records)


def test_finding3_placeholders_in_used_sections_still_are():
    raw = bundled_config()
    raw["train"] = {"x": "{NOT_USED}"}
    raw["writers"][0]["args"]["write_path"] = "{NOT_KNOWN}"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, file="c.json", placeholders={"MODEL_REPOSITORY": "/m"})
    assert info.value.json_path == "writers[0].args.write_path" and "{NOT_KNOWN}" in str(info.value)


# -- finding 4: every problem at once, with the format named ------------------------------------------------
@pytest.mark.parametrize("config, paths", REFUSED, ids=[c[0].split("/")[0] for c in REFUSED])
def test_finding4_every_problem_of_a_published_config_is_reported_together(config, paths):
    with pytest.raises(ConfigError) as info:
        _ = resolve_app(PUBLISHED / config).config
    error = info.value
    assert isinstance(error, ConfigProblems)
    assert [p.json_path for p in error.problems] == paths
    assert error.json_path == paths[0] and error.file == str((PUBLISHED / config).resolve())
    assert "\n" not in str(error) and f"{len(paths)} problems" in str(error)
    assert error.kind in (CLARA3, CLARA4) and error.kind in str(error)


def test_finding4_problems_of_one_component_are_all_named():
    raw = bundled_config()
    raw["pre_transforms"][2]["args"].update(lower="x", uper=3, clip="no")
    raw["post_transforms"][0]["name"] = "ArgmaxAcrossChanels"
    raw["batch_size"] = 0
    with pytest.raises(ConfigProblems) as info:
        parse_config(raw, file="c.json", placeholders={"MODEL_REPOSITORY": "/m"})
    assert {p.json_path for p in info.value.problems} == {
        "batch_size", "pre_transforms[2].args.lower", "pre_transforms[2].args.uper", "pre_transforms[2].args.clip",
        "post_transforms[0].name"}


@pytest.mark.parametrize("config, fmt", [(c[0], c[1]) for c in RUNNABLE])
def test_finding4_the_format_is_recognised(config, fmt):
    raw = json.loads((PUBLISHED / config).read_text())
    from clara_napari.core.config import detect_format

    assert detect_format(raw)[0] == fmt


# -- finding 5: the argument names real Clara 3 configs use ------------------------------------------------
def test_finding5_scale_by_factor_takes_factor_as_published():
    raw = json.loads((PUBLISHED / "heaortanet/config/config_validation.json").read_text())
    entry = raw["pre_transforms"][1]
    assert entry["name"] == "ScaleByFactor" and "factor" in entry["args"]   # as HeaortaNet published it
    config = bundled_config()
    config["pre_transforms"].insert(2, entry)
    loaded = parse_config(config, file="c.json", placeholders={"MODEL_REPOSITORY": "/m"})
    assert loaded.pre_transforms[2].scale_factor == 0.5
    config["pre_transforms"][2] = {"name": "ScaleByFactor", "args": {"fields": "image", "scale_factor": 0.5}}
    assert parse_config(config, file="c.json", placeholders={"MODEL_REPOSITORY": "/m"}).pre_transforms[2].scale_factor == 0.5


def test_finding5_every_clara3_arg_of_the_published_configs_is_understood():
    """Every Clara 3 transform entry in any published config (also training lists) builds, unless custom/training-only."""
    from clara_napari.core.transforms import TRANSFORMS

    checked = 0
    for path in PUBLISHED.glob("*/config/*.json"):
        raw = json.loads(path.read_text())
        from clara_napari.core.config import detect_format

        if path.name == "environment.json" or detect_format(raw)[0] == AIAA:
            continue
        for key in ("pre_transforms", "post_transforms", "label_transforms"):
            for index, spec in enumerate(raw.get(key) or []):
                if "path" in spec or spec.get("name") in TRANSFORMS.skipped or "keys" in spec.get("args", {}):
                    continue
                assert TRANSFORMS.build(spec, f"{key}[{index}]", str(path)) is not None
                checked += 1
    assert checked >= 20


def test_finding5_load_nifti_flag_as_text():
    config = bundled_config()
    config["pre_transforms"][0]["args"]["as_closest_canonical"] = "false"   # as an NVIDIA example wrote it
    loaded = parse_config(config, file="c.json", placeholders={"MODEL_REPOSITORY": "/m"})
    assert loaded.pre_transforms[0].as_closest_canonical is False


# -- finding 6: typo'd args and custom components refused, pointing to the entry-point mechanism -------------
def test_finding6_typo_and_custom_components():
    with pytest.raises(ConfigProblems) as info:
        _ = resolve_app(PUBLISHED / "clara_deploy_lung_lesion/config/config_inference.json").config
    problems = {p.json_path: p for p in info.value.problems}
    assert "Did you mean 'dtype'" in str(problems["writers[0].args.dtypes"])
    inferer = str(problems["inferer.name"])
    assert "custom_inference.CustomInference" in inferer and "clara_napari.components" in inferer
    with pytest.raises(ConfigProblems) as info:
        _ = resolve_app(PUBLISHED / "heaortanet/config/config_validation.json").config
    assert all("entry-point group" in str(p) and "clara_napari.components" in str(p) for p in info.value.problems)


# -- finding 7: AIAA configs recognised and refused before any work -----------------------------------------
@pytest.mark.parametrize("config, where", AIAA_CONFIGS)
def test_finding7_aiaa_configs_are_refused_before_any_work(tmp_path, monkeypatch, capsys, restore_root_logging,
                                                           config, where):
    with pytest.raises(ConfigError) as info:
        load_config(PUBLISHED / config)
    assert not isinstance(info.value, ConfigProblems)
    assert info.value.json_path == where and "AIAA" in str(info.value)
    out = tmp_path / "out"
    code = _run(["run", "--app", str(PUBLISHED / config), "--model", "deepbet_brain_t1", "--server", "local",
                 "--input", str(T1), "--output", str(out), "--no-publish", "--logs", str(tmp_path / "logs")],
                tmp_path / "cwd", monkeypatch)
    assert code == 2 and "AIAA" in capsys.readouterr().err and not out.exists()
    from clara_napari.core.config import detect_format

    assert detect_format(json.loads((PUBLISHED / config).read_text()))[0] == AIAA
