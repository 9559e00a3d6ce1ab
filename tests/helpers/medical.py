"""Shared by unit/test_medical.py and integration/test_medical_volumes.py (definitions both use)."""
from __future__ import annotations

import pytest

from clara_napari.cli import main
from clara_napari.core.volume import Volume, read_volume


@pytest.fixture(scope="module")
def t1(mr_t1_path) -> Volume:
    return read_volume(mr_t1_path)


# -- 1. the brain app works at deepbet's training resolution ----------------------------------
#: Dice without resampling to 1 mm (measured before the fix): 0.5 mm 0.877, 0.7 mm 0.878,
#: 1.5 mm 0.622, 1x1x3 mm 0.600; with it all are 0.93-0.94 (figures in the brain app's README)
SPACINGS = [(0.5, 0.5, 0.5), (0.7, 0.7, 0.7), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (1.0, 1.0, 3.0)]


@pytest.fixture(scope="module")
def chest_ct(chest_ct_path) -> Volume:
    return read_volume(chest_ct_path)


def run_cli(tmp_path, app: str, source, *extra):
    out, logs = tmp_path / "out", tmp_path / "logs"
    code = main(["run", "--app", app, "--input", str(source), "--output", str(out), "--logs", str(logs),
                 "--no-publish", "--server", "local", "--threads", "2", *extra])
    return code, out, logs
