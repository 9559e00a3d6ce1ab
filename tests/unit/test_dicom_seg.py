"""DICOM SEG out of a DICOM series input: written, valid for dciodvfy, equal to the MetaImage labels.

The source series are real: the bundled chest CT written as a CT DICOM series (tests/helpers/dicom_series.py),
and the two-slice Siemens MR series that nibabel ships in its test data. The SEG is read back by
:func:`clara_napari.core.dicom.seg.read_seg`, which unpacks the frames with pydicom + numpy and
places them by their plane positions (no highdicom, which wrote it).

The whole-volume runs (slow) are in tests/integration/test_dicom_seg_volumes.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT, resolve_app
from clara_napari.core.errors import DicomError
from clara_napari.core.volume import read_volume

from helpers.dicom_seg import CT, dciodvfy

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def nibabel_series(tmp_path_factory) -> Path:
    """A real MR series from another source: the two slices in nibabel's test data."""
    nibabel = pytest.importorskip("nibabel")
    data = Path(nibabel.__file__).parent / "tests" / "data"
    if not (data / "0.dcm").is_file() or not (data / "1.dcm").is_file():
        pytest.skip("nibabel's test DICOM files are not installed")
    folder = tmp_path_factory.mktemp("dicom") / "nibabel_mr"
    folder.mkdir()
    for name in ("0.dcm", "1.dcm"):
        shutil.copyfile(data / name, folder / name)
    return folder


# -- the source series ------------------------------------------------------------------------
def test_ct_series_geometry_equals_the_nifti(ct_series):
    import SimpleITK as sitk

    nifti = sitk.ReadImage(str(CT))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ct_series)))
    series = reader.Execute()
    assert series.GetSize() == nifti.GetSize()
    assert series.GetSpacing() == nifti.GetSpacing()
    assert series.GetOrigin() == nifti.GetOrigin()
    assert series.GetDirection() == nifti.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(series), sitk.GetArrayFromImage(nifti))
    code, errors = dciodvfy(sorted(ct_series.iterdir())[0])
    assert errors == []


# -- refusals ---------------------------------------------------------------------------------
def test_non_dicom_input_is_refused_in_one_sentence(tmp_path, capsys):
    from clara_napari.cli import main

    code = main(["run", "--app", "lung_ct", "--input", str(CT), "--output", str(tmp_path / "out"), "--no-publish",
                 "--logs", str(tmp_path / "logs"), "--server", "local", "--dicom-seg"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--dicom-seg needs a DICOM series folder" in err[0]
    assert not (tmp_path / "out").exists()


def test_api_refuses_non_dicom_input(tmp_path):
    import clara_napari as cn

    with pytest.raises(DicomError, match="dicom_seg needs a DICOM series"):
        cn.segment(CT, "lung_ct", server="local", dicom_seg=tmp_path)


def test_labels_off_the_series_grid_are_refused(small_ct_series, tmp_path):
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(small_ct_series)
    shifted = source.with_array(np.ones_like(source.array, dtype=np.uint8))
    shifted.origin = (source.origin[0], source.origin[1], source.origin[2] + 2.5)
    with pytest.raises(DicomError, match="not at slice 0"):
        write_app_seg(shifted, resolve_app("lung_ct"), tmp_path / "x.seg.dcm")
    cropped = source.with_array(np.ones_like(source.array[:3], dtype=np.uint8))
    with pytest.raises(DicomError, match="instances, the volume 3 slices"):
        write_app_seg(cropped, resolve_app("lung_ct"), tmp_path / "x.seg.dcm")
    assert not list(tmp_path.iterdir())


def test_a_non_seg_file_is_refused_by_the_reader(ct_series):
    from clara_napari.core.dicom.seg import read_seg

    with pytest.raises(DicomError, match="not a DICOM SEG"):
        read_seg(sorted(ct_series.iterdir())[0])


# -- the writer's other cases -------------------------------------------------------------------
def test_empty_label_and_custom_codes(small_ct_series, tmp_path):
    """Labels with no voxel are segments with no pixel set; config_seg.json gives a user app's codes."""
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.dicom.writer import write_app_seg

    app_dir = tmp_path / "app"
    shutil.copytree(DATA_ROOT / "config" / "lung_ct", app_dir)
    config = json.loads((app_dir / "config_inference.json").read_text())
    config["labels"] = {"1": {"name": "lung", "color": "#4fa3e0"}, "2": {"name": "vessels", "color": "#ff0000"},
                        "4": {"name": "tumour"}}
    (app_dir / "config_inference.json").write_text(json.dumps(config))
    (app_dir / "config_seg.json").write_text(json.dumps(
        {"labels": {"2": {"category": ["91723000", "SCT", "Anatomical Structure"],
                          "type": ["59820001", "SCT", "Blood vessel"]}}}))
    app = resolve_app(app_dir)
    source = read_volume(small_ct_series)
    labels = np.zeros(source.array.shape, dtype=np.uint8)
    labels[2:5, 40:90, 50:120] = 1
    labels[8, 100:110, 200:260] = 2          # label 4 (tumour) stays empty
    path = write_app_seg(source.with_array(labels), app, tmp_path / "out" / "crop.seg.dcm")
    code, errors = dciodvfy(path)
    assert errors == [] and code == 0
    back = read_seg(path, reference=source)
    names = {s.number: s.label for s in back.segments}
    assert names == {1: "lung", 2: "vessels", 3: "tumour"}
    assert [s.type[0] for s in back.segments] == ["39607008", "59820001", "108369006"]
    value_of = {1: 1, 2: 2, 3: 4}
    restored = np.vectorize(lambda n: value_of.get(int(n), 0))(back.labels.array) if back.labels.array.any() else back.labels.array
    np.testing.assert_array_equal(restored, labels)


def test_empty_brain_segmentation_is_a_valid_seg(nibabel_series, tmp_path):
    """A real MR series from another source (nibabel's test data), tilted by 0.3 degrees, nothing found."""
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(nibabel_series)
    assert source.size == (256, 256, 2) and source.is_oblique   # tilted by 0.3 degrees
    path = write_app_seg(source.with_array(np.zeros(source.array.shape, np.uint8)), resolve_app("brain_extraction_t1"),
                         tmp_path / "empty.seg.dcm")
    code, errors = dciodvfy(path)
    assert errors == [] and code == 0
    back = read_seg(path, reference=source)
    assert [s.label for s in back.segments] == ["brain"] and back.segments[0].type[0] == "12738006"
    assert not back.labels.array.any()


def test_nibabel_series_thresholded_reads_back_equal(nibabel_series, tmp_path):
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(nibabel_series)
    labels = (source.array > np.percentile(source.array, 70)).astype(np.uint8)
    path = write_app_seg(source.with_array(labels), resolve_app("brain_extraction_t1"), tmp_path / "mr.seg.dcm")
    code, errors = dciodvfy(path)
    assert errors == [] and code == 0
    np.testing.assert_array_equal(read_seg(path, reference=source).labels.array, labels)


def test_fractional_seg(small_ct_series, tmp_path):
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(small_ct_series)
    probabilities = np.clip((-source.array.astype(np.float32) - 200.0) / 800.0, 0.0, 1.0)
    path = write_app_seg(source.with_array(probabilities), resolve_app("lung_ct"), tmp_path / "p.seg.dcm",
                         fractional=True)
    code, errors = dciodvfy(path)
    assert errors == [] and code == 0
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert seg.SegmentationType == "FRACTIONAL"
    back = read_seg(path, reference=source)
    # stored as round(p * 255); read back thresholded at one half
    np.testing.assert_array_equal(back.labels.array, (np.round(probabilities * 255) / 255 >= 0.5).astype(np.uint8))


def test_a_seg_writer_in_the_config_refuses_non_dicom_inputs_before_inferring(tmp_path):
    from clara_napari.core.operator import RunOptions, run

    app_dir = tmp_path / "app"
    shutil.copytree(DATA_ROOT / "config" / "lung_ct", app_dir)
    config = json.loads((app_dir / "config_inference.json").read_text())
    config["writers"].append({"name": "DicomSegWriter", "args": {"field": "model"}})
    (app_dir / "config_inference.json").write_text(json.dumps(config))
    with pytest.raises(DicomError, match="the writer DicomSegWriter needs a DICOM series folder"):
        run(RunOptions(app=resolve_app(app_dir), input=CT, output=tmp_path / "out", server="local"))
    assert not (tmp_path / "out").exists()


def test_hostile_seg_files_are_refused(small_ct_series, tmp_path):
    """A tampered SEG (positions far apart, a broken orientation, truncated pixels) is one DicomError, never a crash."""
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(small_ct_series)
    good = write_app_seg(source.with_array(np.ones(source.array.shape, np.uint8)), resolve_app("lung_ct"),
                         tmp_path / "good.seg.dcm")

    def tampered(name, change):
        ds = pydicom.dcmread(good)
        change(ds)
        path = tmp_path / name
        ds.save_as(path)
        return path

    def far(ds):
        ds.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0].ImagePositionPatient[2] = "9.9e9"
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = "0.001"

    def flat(ds):
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 0, 0, 0, 0, 0]

    def short(ds):
        ds.PixelData = bytes(ds.PixelData)[:1000]

    with pytest.raises(DicomError, match="refused as too large"):
        read_seg(tampered("far.dcm", far))
    with pytest.raises(DicomError, match="not a valid grid"):
        read_seg(tampered("flat.dcm", flat))
    with pytest.raises(DicomError, match="truncated"):
        read_seg(tampered("short.dcm", short))
    with pytest.raises(DicomError, match="lies off the grid"):
        read_seg(tampered("off.dcm", lambda ds: ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
                          .ImagePositionPatient.__setitem__(0, "1000")), reference=source)
