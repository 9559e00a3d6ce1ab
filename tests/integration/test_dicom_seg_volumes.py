"""DICOM SEG out of a DICOM series input: written, valid for dciodvfy, equal to the MetaImage labels.

The source series are real: the bundled chest CT written as a CT DICOM series (tests/helpers/dicom_series.py),
and the two-slice Siemens MR series that nibabel ships in its test data. The SEG is read back by
:func:`clara_napari.core.dicom.seg.read_seg`, which unpacks the frames with pydicom + numpy and
places them by their plane positions (no highdicom, which wrote it).

The whole-volume runs (slow); the quick checks are in tests/unit/test_dicom_seg.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT, resolve_app
from clara_napari.core.volume import read_volume

from helpers.dicom_seg import dciodvfy

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lung_run(ct_series, tmp_path_factory):
    """``clara-napari run --app lung_ct --dicom-seg`` on the whole chest CT series (the real model)."""
    from clara_napari.cli import main

    out = tmp_path_factory.mktemp("lung_out")
    code = main(["run", "--app", "lung_ct", "--input", str(ct_series), "--output", str(out), "--no-publish",
                 "--logs", str(out / "logs"), "--server", "local", "--dicom-seg"])
    assert code == 0
    return out


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
