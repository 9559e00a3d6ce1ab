"""Medical correctness of the bundled apps (issue 15): the right resolution, plausibility checks
that refuse to be silently wrong, checked in-memory volumes, test-time augmentation and a second
brain. Everything runs the real deepbet ONNX model in process (``server="local"``) on real MRI/CT.

The whole-volume runs (slow) are in tests/integration/test_medical_volumes.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn

# -- 2. each app states what it expects; implausible runs are said, or refused in strict mode --
from clara_napari.core.apps import resolve_app
from clara_napari.core.config import parse_config  # noqa: E402
from clara_napari.core.errors import ConfigError, VolumeError  # noqa: E402
from clara_napari.core.expectations import check_input, check_output, dicom_modality, label_volumes_ml  # noqa: E402
from clara_napari.core.volume import Volume, read_volume

from helpers import bundled_config
from helpers.medical import run_cli


def write_dicom(folder, volume: Volume, modality: str, description: str, uid: str = "1.2.826.0.1.3680043.2.1125.15"):
    """``volume`` (axis-aligned) as a DICOM series with the given Modality and SeriesDescription."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    source = volume.to_sitk()
    for k in range(volume.size[2]):
        plane = sitk.Cast(source[:, :, k], sitk.sitkInt16)
        position = source.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": modality, "0008|103e": description, "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                "0008|0018": f"{uid}.{k + 1}", "0020|000d": f"{uid}.0", "0020|000e": uid,
                "0020|0032": "\\".join(repr(float(v)) for v in position), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": f"{volume.spacing[1]}\\{volume.spacing[0]}", "0018|0050": str(volume.spacing[2]),
                "0020|0013": str(k + 1)}
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


def axis_aligned(volume: Volume, z: slice, y: slice, x: slice) -> Volume:
    return Volume(np.ascontiguousarray(volume.array[z, y, x]), spacing=volume.spacing, origin=(0.0, 0.0, 0.0))


def test_bundled_apps_state_their_expectations():
    brain, lung = resolve_app("brain_extraction_t1").config, resolve_app("lung_ct").config
    assert brain.expectations.modality == ["MR"] and lung.expectations.modality == ["CT"]
    assert brain.expectations.labels["1"].min_ml > 0 and lung.expectations.labels["1"].max_ml > 0
    assert brain.expectations.intensity.p1 == (-100.0, None)


@pytest.mark.parametrize("expectations, path", [
    ({"modality": ["mr"]}, "expectations.modality"),
    ({"modality": "MR"}, "expectations.modality"),
    ({"intensity": {"p1": [5, 1]}}, "expectations.intensity.p1"),
    ({"intensity": {"p50": [0, 1]}}, "expectations.intensity.p50"),
    ({"labels": {"1": {"min_ml": 10, "max_ml": 5}}}, "expectations.labels.1"),
    ({"labels": {"one": {"min_ml": 1}}}, "expectations.labels"),
    ({"labels": {"1": {"min_ml": -1}}}, "expectations.labels.1.min_ml"),
    ({"colour": "red"}, "expectations.colour"),
    ([1, 2], "expectations"),
])
def test_bad_expectations_name_their_json_path(expectations, path):
    config = bundled_config()
    config["expectations"] = expectations
    with pytest.raises(ConfigError) as info:
        parse_config(config, file="app.json", placeholders={"MODEL_REPOSITORY": "/models"})
    assert info.value.json_path == path, str(info.value)
    assert str(info.value).startswith("app.json: expectations")


def test_dicom_modality_and_series_description_are_kept_and_used(tmp_path, chest_ct, t1):
    brain = resolve_app("brain_extraction_t1").config.expectations
    ct = read_volume(write_dicom(tmp_path / "ct", axis_aligned(chest_ct, slice(20, 26), slice(200, 264), slice(200, 264)),
                                 "CT", "CHEST 5mm"))
    assert dicom_modality(ct.metadata) == "CT" and ct.metadata["0008|103e"].strip() == "CHEST 5mm"
    findings = check_input(ct, brain)
    assert any("the modality is CT, a T1-weighted MRI of the head is MR" in f for f in findings), findings
    flair = read_volume(write_dicom(tmp_path / "flair", axis_aligned(t1, slice(80, 86), slice(80, 144), slice(60, 124)),
                                    "MR", "AX T2 FLAIR"))
    findings = check_input(flair, brain)
    assert findings == ["input: the series description 'AX T2 FLAIR' names T2, not a T1-weighted MRI of the head."]
    t1_dicom = read_volume(write_dicom(tmp_path / "t1", axis_aligned(t1, slice(80, 86), slice(80, 144), slice(60, 124)),
                                       "MR", "SAG T1 MPRAGE"))
    assert check_input(t1_dicom, brain) == []


def test_modality_from_dicom_tag_or_metaimage_field():
    assert dicom_modality({"0008|0060": "MR "}) == "MR"
    assert dicom_modality({"Modality": "MET_MOD_CT"}) == "CT"
    assert dicom_modality({"Modality": "MET_MOD_UNKNOWN"}) == "" and dicom_modality({}) == ""


def test_label_volumes_and_output_findings(t1):
    labels = Volume(np.zeros((10, 10, 10), np.uint8), spacing=(2.0, 2.0, 2.5))
    labels.array[:4] = 1            # 400 voxels of 10 ul
    labels.array[9, 9, 9] = 7       # a value the app does not name
    volumes = label_volumes_ml(labels, {1: "brain", 2: "csf"})
    assert volumes == {"brain": pytest.approx(4.0), "csf": 0.0, "label 7": pytest.approx(0.01)}
    brain = resolve_app("brain_extraction_t1").config.expectations
    assert check_output({"brain": 1737.0}, {1: "brain"}, brain) == []
    assert check_output({"brain": 18561.0}, {1: "brain"}, brain) == [
        "result: brain is 18561 ml, where 700 to 2300 ml is plausible for a T1-weighted MRI of the head."]
    assert check_output({"brain": 0.0}, {1: "brain"}, None) == []


def test_constant_input_is_a_finding_for_every_app(t1):
    zero = t1.with_array(np.zeros_like(t1.array))
    assert check_input(zero, None) == ["input: every voxel is 0; the volume holds no image."]
    assert check_input(t1, None) == []


def test_ct_through_the_brain_app_is_refused_in_strict_mode_before_inference(tmp_path, chest_ct_path, capsys,
                                                                              restore_root_logging):
    code, out, _ = run_cli(tmp_path, "brain_extraction_t1", chest_ct_path, "--strict")
    captured = capsys.readouterr()
    assert code == 1
    assert not out.exists() or not any(out.iterdir())
    assert "the 1st intensity percentile is -1013, where a T1-weighted MRI of the head has at least -100" in captured.err


# -- 3. in-memory volumes get the readers' voxel checks ---------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_in_memory_non_finite_voxels_are_refused(t1, bad):
    array = t1.array.astype(np.float32)
    array[90, 100, 90] = bad
    with pytest.raises(VolumeError, match=r"^the in-memory volume: 1 voxels are not finite"):
        cn.segment(Volume(array, spacing=t1.spacing, origin=t1.origin, direction=t1.direction), app="brain_extraction_t1",
                   server="local")


def test_in_memory_volume_with_a_path_is_named_and_non_numbers_refused(t1, tmp_path):
    array = t1.array.astype(np.float64)
    array[0, 0, 0] = np.nan
    with pytest.raises(VolumeError, match=r"^.*scan\.nii\.gz: 1 voxels are not finite"):
        cn.run_app(Volume(array, path=tmp_path / "scan.nii.gz"), app="brain_extraction_t1", server="local")
    with pytest.raises(VolumeError, match="the voxels are of type object, not numbers"):
        cn.segment(Volume(t1.array.astype(object)), app="brain_extraction_t1", server="local")


def test_segment_volume_checks_in_memory_voxels_too(tmp_path):
    """The napari panel hands layer data straight to segment_volume: the same refusal there."""
    from clara_napari.core.pipeline import segment_volume

    from helpers import threshold_model, write_app

    array = np.ones((8, 9, 10), np.float32)
    array[1, 2, 3] = np.inf
    config = bundled_config()
    config["inferer"]["args"]["roi_size"] = [32, 32, 32]
    app = resolve_app(write_app(tmp_path / "app", config))
    model = threshold_model(0.5)
    with pytest.raises(VolumeError, match=r"^the in-memory volume: 1 voxels are not finite"):
        segment_volume(Volume(array), app.config, model)
    assert model.calls == 0


# -- 4. test-time augmentation (mirroring) ------------------------------------------------------
from clara_napari.core.windows import mirror_combinations, sliding_window  # noqa: E402

from helpers.predictors import FunctionPredictor  # noqa: E402


def test_mirror_combinations():
    assert mirror_combinations([]) == [()]
    assert mirror_combinations([0]) == [(), (0,)]
    assert mirror_combinations([2, 0, 1]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def test_mirrored_windows_average_the_mirrored_back_predictions():
    rng = np.random.default_rng(15)
    image = rng.normal(size=(1, 20, 18, 16)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, 12, dtype=np.float32)[:, None, None]   # position-dependent: not mirror-equivariant
    calls = []

    def fn(batch):
        calls.append(batch.shape[0])
        return np.concatenate([batch * ramp, batch ** 2], axis=1)

    roi = (12, 12, 12)
    plain = sliding_window(image, FunctionPredictor(fn), roi, overlap=0.5)
    windows = len(calls)
    calls.clear()
    mirrored = sliding_window(image, FunctionPredictor(fn), roi, overlap=0.5, mirror_axes=(0, 2))
    assert len(calls) == 4 * windows
    # channel 1 (x^2) commutes with mirroring: unchanged; channel 0 is the mean of the 4 mirrored ramps
    np.testing.assert_allclose(mirrored[1], plain[1], rtol=1e-6)
    assert not np.allclose(mirrored[0], plain[0])
    expected = sliding_window(image, FunctionPredictor(lambda b: b * ((ramp + ramp[::-1]) / 2)), roi, overlap=0.5)
    np.testing.assert_allclose(mirrored[0], expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tta", ["flip", [3], [], [0, 0], True])
def test_bad_tta_names_its_json_path(tta):
    config = bundled_config()
    config["inferer"]["args"]["tta"] = tta
    with pytest.raises(ConfigError) as info:
        parse_config(config, file="app.json", placeholders={"MODEL_REPOSITORY": "/models"})
    assert info.value.json_path.startswith("inferer.args.tta"), str(info.value)
