"""DICOM SEG out of a DICOM series input: written, valid for dciodvfy, equal to the MetaImage labels.

The source series are real: the bundled chest CT written as a CT DICOM series (tests/dicom_series.py),
and the two-slice Siemens MR series that nibabel ships in its test data. The SEG is read back by
:func:`clara_napari.core.dicom.seg.read_seg`, which unpacks the frames with pydicom + numpy and
places them by their plane positions (no highdicom, which wrote it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.apps import resolve_app
from clara_napari.core.errors import DicomError
from clara_napari.core.volume import read_volume
from dicom_series import write_ct_series

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="module")
def lung_run(ct_series, tmp_path_factory):
    """``clara-napari run --app lung_ct --dicom-seg`` on the whole chest CT series (the real model)."""
    from clara_napari.cli import main

    out = tmp_path_factory.mktemp("lung_out")
    code = main(["run", "--app", "lung_ct", "--input", str(ct_series), "--output", str(out), "--no-publish",
                 "--logs", str(out / "logs"), "--server", "local", "--dicom-seg"])
    assert code == 0
    return out


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


# -- the whole chest CT through the lung app --------------------------------------------------
@pytest.mark.slow
def test_lung_seg_is_valid_for_dciodvfy(lung_run):
    code, errors = dciodvfy(lung_run / "chest_ct.seg.dcm")
    assert errors == [] and code == 0


@pytest.mark.slow
def test_lung_seg_reads_back_equal_to_the_metaimage(lung_run, ct_series):
    from clara_napari.core.dicom.seg import read_seg

    mhd = read_volume(lung_run / "chest_ct.mhd")
    source = read_volume(ct_series)
    seg = read_seg(lung_run / "chest_ct.seg.dcm", reference=source)
    assert np.count_nonzero(mhd.array) > 100000
    assert seg.labels.geometry() == mhd.geometry() == source.geometry()
    np.testing.assert_array_equal(seg.labels.array, mhd.array)
    # and on the grid the SEG's own frames span (no reference volume)
    alone = read_seg(lung_run / "chest_ct.seg.dcm")
    assert alone.labels.size == mhd.size
    np.testing.assert_allclose(alone.labels.origin, mhd.origin, atol=1e-6)
    np.testing.assert_allclose(alone.labels.spacing, mhd.spacing, atol=1e-6)
    np.testing.assert_array_equal(alone.labels.array, mhd.array)


@pytest.mark.slow
def test_lung_seg_references_the_source_series(lung_run, ct_series):
    seg = pydicom.dcmread(lung_run / "chest_ct.seg.dcm")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_series.iterdir())]
    first = sources[0]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in sources}
    positions = {tuple(float(v) for v in s.ImagePositionPatient) for s in sources}
    frame_positions = {tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                       for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_positions == positions
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "lung"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "lung_ct"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert "lung_air_density" in algorithm.AlgorithmVersion
    from highdicom.color import CIELabColor

    assert tuple(segment.RecommendedDisplayCIELabValue) == CIELabColor.from_rgb(0x4F, 0xA3, 0xE0).value


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


# -- the config writer and the API --------------------------------------------------------------
@pytest.mark.slow
def test_dicom_seg_writer_in_a_config_and_the_api(small_ct_series, tmp_path):
    import clara_napari as cn
    from clara_napari.core.dicom.seg import read_seg
    from clara_napari.core.operator import RunOptions, run

    app_dir = tmp_path / "app"
    shutil.copytree(DATA_ROOT / "config" / "lung_ct", app_dir)
    config = json.loads((app_dir / "config_inference.json").read_text())
    config["writers"].append({"name": "DicomSegWriter", "args": {"field": "model"}})
    (app_dir / "config_inference.json").write_text(json.dumps(config))
    app = resolve_app(app_dir)
    (result,) = run(RunOptions(app=app, input=small_ct_series.parent, output=tmp_path / "out", server="local"))
    assert result.ok, result.message
    assert [p.name for p in result.outputs] == ["chest_crop.mhd", "chest_crop.seg.dcm"]
    mhd = read_volume(tmp_path / "out" / "chest_crop.mhd")
    source = read_volume(small_ct_series)
    from_config = read_seg(tmp_path / "out" / "chest_crop.seg.dcm", reference=source).labels.array
    np.testing.assert_array_equal(from_config, mhd.array)
    assert mhd.array.any()
    labels = cn.segment(small_ct_series, "lung_ct", server="local", dicom_seg=tmp_path / "api")
    np.testing.assert_array_equal(labels.array, mhd.array)
    np.testing.assert_array_equal(read_seg(tmp_path / "api" / "chest_crop.seg.dcm", reference=source).labels.array,
                                  mhd.array)


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
