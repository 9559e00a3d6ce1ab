"""The whole flow with the real deepbet ONNX model on real MRI, in process (``--server local``).

The full-volume run (slow) is in tests/integration/test_local_pipeline_volume.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari
from clara_napari.core.apps import resolve_app
from clara_napari.core.backends.local import LocalBackend
from clara_napari.core.errors import Cancelled, ModelMismatchError
from clara_napari.core.geometry import orientation
from clara_napari.core.progress import CancelToken
from clara_napari.core.volume import Volume, read_volume, write_volume

from helpers import assert_same_geometry, bundled_config, crop_volume, dice, write_app
from helpers.local_pipeline import (
    CROP,
    cli_run,
)


@pytest.fixture(scope="module")
def mr_t1(mr_t1_path) -> Volume:
    return read_volume(mr_t1_path)


def centre(volume: Volume) -> tuple[int, int, int]:
    return tuple(s // 2 for s in volume.size)


@pytest.fixture(scope="module")
def crop(mr_t1) -> Volume:
    """A 96^3 crop around the centre of the head (keeps the sample's 1 mm grid and RAS direction)."""
    return crop_volume(mr_t1, centre(mr_t1), (CROP,) * 3)


@pytest.fixture(scope="module")
def app96(tmp_path_factory, model_repository):
    """The bundled brain app with 96^3 windows (the network takes multiples of 32)."""
    config = bundled_config()
    config["inferer"]["args"]["roi_size"] = [CROP] * 3
    return write_app(tmp_path_factory.mktemp("apps") / "brain96", config)


@pytest.fixture(scope="module")
def crop_labels(crop, app96) -> Volume:
    return clara_napari.segment(crop, app=str(app96), server="local")


def test_window_size_suits_the_model(app96, model_repository):
    app = resolve_app(app96)
    roi = app.config.inferer.roi_size
    assert roi == [CROP] * 3 and all(r % 32 == 0 for r in roi)
    model = LocalBackend(threads=1).open(app.model_repository, app.config.model_name)
    try:
        assert model.input.dims == (1, -1, -1, -1) and model.max_batch_size >= 1
        out = model.predict(np.zeros((2, 1, 32, 64, 32), np.float32))
        assert out.shape == (2, 2, 32, 64, 32) and out.dtype == np.float32
        # channel 0/1 are probabilities of background/brain
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)
        with pytest.raises(ModelMismatchError, match=r"input shapes? \[+1, 1, 40, 32, 32\]"):
            model.predict(np.zeros((1, 1, 40, 32, 32), np.float32))
    finally:
        model.close()


def test_segment_crop_returns_labels_on_the_input_grid(crop, crop_labels, brain_mask):
    labels = crop_labels
    assert isinstance(labels, Volume)
    assert labels.array.dtype == np.uint8
    assert labels.array.shape == crop.array.shape
    assert_same_geometry(labels, crop)
    assert set(np.unique(labels.array)) <= {0, 1}
    reference = crop_volume(brain_mask, centre(brain_mask), (CROP,) * 3).array > 0
    found = labels.array > 0
    # the centre of the head is mostly brain: a real share of it is found, and what is found is brain
    assert 0.15 < found.mean() <= 1.0
    assert np.logical_and(found, reference).sum() / found.sum() > 0.95


def test_segment_does_not_depend_on_the_input_orientation(crop, crop_labels, app96):
    # the same voxels stored LPS (identity direction) instead of RAS: as_closest_canonical brings both
    # to the same array for the network, and the labels come back onto each input's own voxels
    lps = Volume.from_sitk(sitk.DICOMOrient(crop.to_sitk(), "LPS"))
    assert orientation(lps.direction) == "LPS" and orientation(crop.direction) == "RAS"
    assert not np.array_equal(lps.array, crop.array)
    labels = clara_napari.segment(lps, app=str(app96), server="local")
    assert_same_geometry(labels, lps)
    back = Volume.from_sitk(sitk.DICOMOrient(labels.to_sitk(), "RAS"))
    np.testing.assert_array_equal(back.array, crop_labels.array)


def test_window_size_the_network_cannot_take_is_a_model_mismatch(crop, tmp_path):
    config = bundled_config()
    config["inferer"]["args"]["roi_size"] = [80, 80, 80]
    app = write_app(tmp_path / "brain80", config)
    with pytest.raises(ModelMismatchError, match="deepbet_brain_t1"):
        clara_napari.segment(crop_volume(crop, (40, 40, 40), (80, 80, 80)), app=str(app), server="local")


def test_cancel_stops_the_run(crop, app96):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        clara_napari.segment(crop, app=str(app96), server="local", cancel=token)


def test_single_window_of_the_whole_head_matches_the_reference(mr_t1, brain_mask, tmp_path):
    # 160^3 around the centre holds nearly all the brain: one window, Dice against the reference mask
    config = bundled_config()
    app = write_app(tmp_path / "brain160", config)
    head = crop_volume(mr_t1, centre(mr_t1), (160, 160, 160))
    progress = []
    result = clara_napari.run_app(head, app=str(app), server="local", progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (1, 1)
    assert_same_geometry(result.labels, head)
    reference = crop_volume(brain_mask, centre(brain_mask), (160, 160, 160))
    assert dice(result.labels.array, reference.array) >= 0.9
    assert result.model == "deepbet_brain_t1" and result.backend.startswith("local ")
    assert set(result.timings) >= {"pre_transforms", "inference", "post_transforms"}


# -- the CLI (the Clara operator) --------------------------------------------------------------
@pytest.fixture
def operator_folders(tmp_path, crop):
    folders = {name: tmp_path / name for name in ("input", "output", "logs")}
    folders["input"].mkdir()
    write_volume(crop, folders["input"] / "colin_crop.nii.gz")
    return folders


def test_cli_run_writes_the_labels(app96, operator_folders, crop_labels, capsys, restore_root_logging):
    assert cli_run(app96, operator_folders) == 0
    out = capsys.readouterr().out
    assert "1/1 volumes segmented" in out
    written = operator_folders["output"] / "colin_crop.mhd"
    assert sorted(os.listdir(operator_folders["output"])) == ["colin_crop.mhd", "colin_crop.raw"]
    labels = read_volume(written)
    source = read_volume(operator_folders["input"] / "colin_crop.nii.gz")
    assert_same_geometry(labels, source)
    assert labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, crop_labels.array)
    # the run was logged under --logs, and nothing was written beside the input
    assert any(p.suffix == ".log" and p.stat().st_size > 0 for p in operator_folders["logs"].iterdir())
    assert os.listdir(operator_folders["input"]) == ["colin_crop.nii.gz"]


def test_cli_refuses_to_overwrite_without_overwrite(app96, operator_folders, capsys, restore_root_logging):
    assert cli_run(app96, operator_folders) == 0
    written = operator_folders["output"] / "colin_crop.mhd"
    before = written.read_bytes(), (operator_folders["output"] / "colin_crop.raw").read_bytes()
    mtime = written.stat().st_mtime_ns
    capsys.readouterr()
    assert cli_run(app96, operator_folders) == 1
    err = capsys.readouterr().err
    assert "colin_crop.mhd" in err and "exists already" in err and "--overwrite" in err
    assert written.stat().st_mtime_ns == mtime
    assert (written.read_bytes(), (operator_folders["output"] / "colin_crop.raw").read_bytes()) == before
    assert cli_run(app96, operator_folders, "--overwrite") == 0
    assert read_volume(written).array.any()


def test_cli_reports_a_bad_input_and_goes_on(app96, operator_folders, capsys, restore_root_logging):
    (operator_folders["input"] / "broken.nii.gz").write_bytes(b"not a volume at all")
    assert cli_run(app96, operator_folders) == 1
    captured = capsys.readouterr()
    assert "broken.nii.gz" in captured.err and "1/2 volumes segmented" in captured.out
    assert sorted(os.listdir(operator_folders["output"])) == ["colin_crop.mhd", "colin_crop.raw"]
