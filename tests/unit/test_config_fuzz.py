"""Config fuzzing: any JSON either loads or raises ConfigError with a JSON path — never another exception."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.config import load_config, parse_config
from clara_napari.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SKELETONS = [json.loads((DATA_ROOT / "config" / app / "config_inference.json").read_text())
             for app in ("brain_extraction_t1", "lung_ct")]
PLACEHOLDERS = {"MODEL_REPOSITORY": str(DATA_ROOT / "sample_data" / "models"), "APP_DIR": str(ROOT)}

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["image", "model", "{PBTXT_PATH}", "{NOPE}", "LoadNifti", "gaussian",
                                           "ArgmaxAcrossChannels", "TRTISScanWindowInferer", "é\u202e\x00", ""]))
json_value = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)), max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated_configs(draw):
    config = copy.deepcopy(draw(st.sampled_from(SKELETONS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(config))
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "wrap", "rename"]))
        key = path[-1]
        if action == "replace":
            parent[key] = draw(json_value)
        elif action == "delete":
            del parent[key]
        elif action == "wrap":
            parent[key] = [parent[key]] if draw(st.booleans()) else {"args": parent[key]}
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(key)
    return config


def _check(raw):
    try:
        parse_config(raw, file="fuzz.json", placeholders=PLACEHOLDERS)
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError must say something"
        assert "\n" not in str(exc), "one line"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_skeletons_load_or_raise_config_error(raw):
    _check(raw)


@settings(max_examples=150, deadline=None)
@given(json_value)
def test_arbitrary_json_loads_or_raises_config_error(raw):
    _check(raw)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["pre_transforms", "post_transforms", "writers", "inferer", "model_loader", "labels",
                        "batch_size", "use_scanning_window"]), json_value)
def test_each_top_level_key_with_any_value(key, value):
    raw = copy.deepcopy(SKELETONS[0])
    raw[key] = value
    _check(raw)


def test_error_names_json_path():
    raw = copy.deepcopy(SKELETONS[0])
    raw["post_transforms"][2]["args"]["fields"] = 7
    with pytest.raises(ConfigError) as info:
        parse_config(raw, file="x.json", placeholders=PLACEHOLDERS)
    assert info.value.json_path.startswith("post_transforms[2].args.fields")


@pytest.mark.parametrize("text", ["[" * 100000, '{"a": ' * 50000 + "1" + "}" * 50000, "\ufeff{}", "\x00", "{'a': 1}",
                                  '{"batch_size": 1e999}', "NaN"])
def test_pathological_files(tmp_path, text):
    path = tmp_path / "config_inference.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path, PLACEHOLDERS)


def test_huge_nesting_inside_args(tmp_path):
    raw = copy.deepcopy(SKELETONS[0])
    deep = current = {}
    for _ in range(5000):
        current["x"] = {}
        current = current["x"]
    raw["pre_transforms"][0]["args"]["extra"] = deep
    with pytest.raises(ConfigError):
        parse_config(raw, file="deep.json", placeholders=PLACEHOLDERS)


def test_no_component_name_can_import_code():
    """Dotted paths or module names are refused as unknown names: a config never imports code."""
    for name in ["os.system", "subprocess.Popen", "builtins.eval", "clara_napari.core.volume.write_volume"]:
        raw = copy.deepcopy(SKELETONS[0])
        raw["pre_transforms"][0]["name"] = name
        with pytest.raises(ConfigError, match="unknown transform"):
            parse_config(raw, placeholders=PLACEHOLDERS)
