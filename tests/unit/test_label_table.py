"""The one label table: built from an app's config, a napari record or a label map, and every form it takes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clara_napari.core.config import LabelInfo
from clara_napari.core.label_table import PALETTE, Label, LabelTable, default_color
from clara_napari.core.publish import config_meta, generated_render_config


def app_labels() -> dict[int, LabelInfo]:
    return {2: LabelInfo(name="right lung", color="#00FF00"), 1: LabelInfo(name="left lung")}


def test_from_config_orders_by_value_and_fills_the_palette():
    table = LabelTable.from_config(app_labels())
    assert table.values == [1, 2]
    assert table.names() == {1: "left lung", 2: "right lung"}
    assert table.colors() == {1: PALETTE[0], 2: "#00ff00"}   # the palette where none is given; lower case


def test_palette_wraps_around():
    assert default_color(1) == PALETTE[0] and default_color(len(PALETTE) + 1) == PALETTE[0]
    assert default_color(len(PALETTE)) == PALETTE[-1]


def test_numbered_skips_background_and_repeats():
    table = LabelTable.numbered(np.array([0, 3, 3, 1, 0]))
    assert table.names() == {1: "label 1", 3: "label 3"}
    assert table.colors() == {1: PALETTE[0], 3: PALETTE[2]}


def test_record_round_trip_and_hostile_entries_left_out():
    table = LabelTable.from_config(app_labels())
    assert LabelTable.from_record({"labels": table.record()}) == table
    record = {"labels": {"1": ["ok", "#112233"], "x": ["bad value", "#000000"], "2": ["bad colour", "red"],
                         "3": "short", "4": None}}
    assert LabelTable.from_record(record).names() == {1: "ok"}
    assert not LabelTable.from_record({"labels": ["not", "a", "mapping"]})
    assert not LabelTable.from_record({})


def test_label_refuses_a_colour_that_is_not_hex_and_a_table_refuses_twins():
    with pytest.raises(ValueError):
        Label(1, "a", "#12345")
    with pytest.raises(ValueError):
        LabelTable((Label(1, "a", "#000000"), Label(1, "b", "#ffffff")))


def test_rgb_features_and_colour_dict():
    table = LabelTable.from_pairs({1: ("brain", "#ff8000")})
    assert table.get(1).rgba == (1.0, 128 / 255.0, 0.0, 1.0)
    assert table.features() == {"index": [0, 1], "name": ["background", "brain"]}
    colours = table.color_dict()
    assert colours[0] == (0.0, 0.0, 0.0, 0.0) and colours[None] == (1.0, 1.0, 1.0, 1.0)
    assert colours[1] == table.get(1).rgba


def test_name_of():
    table = LabelTable.from_pairs({1: ("brain", "#ff8000")})
    assert table.name_of(1) == "brain" and table.name_of(1, "class_1") == "brain"
    assert table.name_of(9) == "label 9" and table.name_of(9, "class_9") == "class_9"


def test_config_reads_its_labels_from_the_table(tmp_path):
    from clara_napari.core.config import load_config

    raw = {"pre_transforms": [], "inferer": {"name": "TRTISSimpleInferer", "args": {"model_name": "m"}},
           "post_transforms": [], "writers": [{"name": "WriteNifti", "args": {"field": "model"}}],
           "labels": {"2": {"name": "b", "color": "#ABCDEF"}, "1": "a"}}
    path = tmp_path / "config_inference.json"
    path.write_text(json.dumps(raw))
    config = load_config(path)
    assert config.label_table() == LabelTable((Label(1, "a", PALETTE[0]), Label(2, "b", "#abcdef")))
    assert config.label_names() == config.label_table().names()


def test_publish_uses_the_table_colours_and_names():
    table = LabelTable.from_pairs({1: ("brain", "#ff0000"), 2: ("tumour", "#0000ff")})
    components = generated_render_config(table)["TransferFunction"]["components"]
    assert [c["activeRegions"] for c in components] == [[0], [1], [2]]
    assert components[1]["diffuseStart"] == {"x": 1.0, "y": 0.0, "z": 0.0}
    assert components[2]["diffuseStart"] == {"x": 0.0, "y": 0.0, "z": 1.0}
    meta = config_meta("m", "v.mhd", ["v.out.mhd"], "meta", table)
    assert meta["labels"] == {"1": {"name": "brain", "color": "#ff0000"}, "2": {"name": "tumour", "color": "#0000ff"}}
    assert "labels" not in config_meta("m", "v.mhd", ["v.out.mhd"], "meta", LabelTable())


def test_dicom_segment_infos_take_the_table_and_number_the_rest():
    from clara_napari.core.dicom.codes import segment_infos

    infos = segment_infos(LabelTable.from_pairs({1: ("Brain", "#ff0000")}), None, values=[0, 1, 4])
    assert [(i.value, i.name, i.color) for i in infos] == [(1, "Brain", "#ff0000"), (4, "label 4", "#ffffff")]
    assert infos[0].type[2] == "Brain"
