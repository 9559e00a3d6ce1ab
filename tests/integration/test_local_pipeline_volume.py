"""The whole flow with the real deepbet ONNX model on real MRI, in process (``--server local``).

The full-volume run (slow); the crops are in tests/unit/test_local_pipeline.py.
"""
from __future__ import annotations

import shutil

import pytest

from clara_napari.core.volume import read_volume

from helpers import assert_same_geometry, dice
from helpers.local_pipeline import (
    cli_run,
)


@pytest.mark.slow
def test_cli_full_volume_matches_the_reference(tmp_path, mr_t1_path, brain_mask, capsys, restore_root_logging):
    folders = {name: tmp_path / name for name in ("input", "output", "logs")}
    folders["input"].mkdir()
    shutil.copy(mr_t1_path, folders["input"] / mr_t1_path.name)
    assert cli_run("brain_extraction_t1", folders) == 0
    labels = read_volume(folders["output"] / "mr_t1_colin27.mhd")
    assert_same_geometry(labels, read_volume(mr_t1_path))
    assert dice(labels.array, brain_mask.array) >= 0.93
    volume_ml = labels.physical_volume_ml()
    assert 0.85 * brain_mask.physical_volume_ml() < volume_ml < 1.15 * brain_mask.physical_volume_ml()
