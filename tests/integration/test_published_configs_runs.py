"""Real published Clara configs (tests/data/published_configs, cited in its README), run unchanged.

Only the model is swapped (``--model``): the bundled deepbet network on the T1 MRI, the bundled
air-density model on the chest CT. The outputs must land in ``--output`` (never the working or
the input folder) with the input's geometry exactly. One test per finding of issue 14 follows.

The runs (slow, one through the embedded Triton); loading and refusals are in tests/unit/test_published_configs.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.volume import read_volume

from helpers import assert_same_geometry
from helpers.published_configs import CT, PUBLISHED, RUNNABLE, T1, _run


def _input(kind: str) -> Path:
    path = T1 if kind == "t1" else CT
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config, fmt, model, kind, fields", RUNNABLE, ids=[c[0].split("/")[0] + "/" + c[0].split("/")[-1]
                                                                            for c in RUNNABLE])
def test_published_config_runs_unchanged(tmp_path, monkeypatch, capsys, restore_root_logging, config, fmt, model, kind,
                                         fields):
    source = _input(kind)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(source, inputs / source.name)
    out = tmp_path / "out"
    code = _run(["run", "--app", str(PUBLISHED / config), "--model", model, "--server", "local", "--input", str(inputs),
                 "--output", str(out), "--no-publish", "--logs", str(tmp_path / "logs")], tmp_path / "cwd", monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"served by Triton model {model!r} (from --model)" in captured.err
    stem = source.name.removesuffix(".nii.gz")
    expected = {f"{stem}.mhd", f"{stem}.raw"} | {f"{stem}.{f}.{e}" for f in fields[1:] for e in ("mhd", "raw")}
    assert {p.name for p in out.iterdir()} == expected
    assert list((tmp_path / "cwd").iterdir()) == []                # finding 1: nothing next to the caller
    assert sorted(p.name for p in inputs.iterdir()) == [source.name]  # nor next to the input
    original = read_volume(source)
    for name in sorted(expected):
        if name.endswith(".mhd"):
            written = read_volume(out / name)
            assert_same_geometry(written, original)
            assert written.array.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.triton
def test_a_published_clara4_config_through_the_embedded_triton(tmp_path, monkeypatch, capsys, restore_root_logging):
    source = _input("t1")
    out = tmp_path / "out"
    code = _run(["run", "--app", str(PUBLISHED / "clara4_spleen_getting_started"), "--model", "deepbet_brain_t1",
                 "--input", str(source), "--output", str(out), "--no-publish", "--logs", str(tmp_path / "logs")],
                tmp_path / "cwd", monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = read_volume(out / "mr_t1_colin27.mhd")
    assert_same_geometry(written, read_volume(source))
    assert list((tmp_path / "cwd").iterdir()) == []
