"""Shared by unit/test_dicom_seg.py and integration/test_dicom_seg_volumes.py (definitions both use)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.volume import read_volume

from helpers.dicom_series import write_ct_series

CT = DATA_ROOT / "sample_data" / "chest_ct" / "chest_ct_lung2.nii.gz"


def dciodvfy(path: Path) -> tuple[int, list[str]]:
    """dciodvfy's exit code and its error lines (warnings are kept out)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [ln for ln in lines if ln.startswith("Error")]


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory) -> Path:
    """The bundled chest CT as a CT Image Storage series, one file per slice."""
    folder = tmp_path_factory.mktemp("dicom") / "chest_ct"
    write_ct_series(read_volume(CT), folder)
    return folder


@pytest.fixture(scope="session")
def small_ct_series(tmp_path_factory) -> Path:
    """A crop of the chest CT (both lungs, 16 slices) as a series: quick model runs."""
    volume = read_volume(CT)
    crop = volume.with_array(np.ascontiguousarray(volume.array[20:36, 96:416, 32:480]))
    crop.origin = tuple(np.asarray(volume.origin) + volume.direction_matrix @ (np.asarray(volume.spacing) * [32, 96, 20]))
    folder = tmp_path_factory.mktemp("dicom") / "chest_crop"
    write_ct_series(crop, folder)
    return folder
