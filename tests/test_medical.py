"""Medical correctness of the bundled apps (issue 15): the right resolution, plausibility checks
that refuse to be silently wrong, checked in-memory volumes, test-time augmentation and a second
brain. Everything runs the real deepbet ONNX model in process (``server="local"``) on real MRI/CT.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn
from clara_napari.core.apps import resolve_app
from clara_napari.core.volume import Volume, read_volume

from conftest import assert_same_geometry, dice


@pytest.fixture(scope="module")
def t1(mr_t1_path) -> Volume:
    return read_volume(mr_t1_path)


@pytest.fixture(scope="module")
def t1_mask(brain_mask_path) -> Volume:
    return read_volume(brain_mask_path)


@pytest.fixture(scope="module")
def brain_app(model_repository):
    return resolve_app("brain_extraction_t1")


def resample_to(volume: Volume, spacing, *, is_label: bool) -> Volume:
    """``volume`` on a grid of ``spacing`` mm over the same extent (same origin and direction).

    Images: linear interpolation; masks: linear interpolation of the 0/1 mask thresholded at
    0.5 (a partial-volume reference, not nearest neighbour's staircase).
    """
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    size = [int(round(n * old / new)) for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), tuple(spacing),
                        image.GetDirection(), 0.0, sitk.sitkFloat32)
    if is_label:
        out = sitk.Cast(out > 0.5, sitk.sitkUInt8)
    return Volume.from_sitk(out)


# -- 1. the brain app works at deepbet's training resolution ----------------------------------
#: Dice without resampling to 1 mm (measured before the fix): 0.5 mm 0.877, 0.7 mm 0.878,
#: 1.5 mm 0.622, 1x1x3 mm 0.600; with it all are 0.93-0.94 (figures in the brain app's README)
SPACINGS = [(0.5, 0.5, 0.5), (0.7, 0.7, 0.7), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (1.0, 1.0, 3.0)]


@pytest.mark.slow
@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: "x".join(f"{v:g}" for v in s))
def test_brain_app_dice_at_other_resolutions(t1, t1_mask, brain_app, spacing):
    volume = resample_to(t1, spacing, is_label=False)
    reference = resample_to(t1_mask, spacing, is_label=True)
    start = time.perf_counter()
    labels = cn.segment(volume, app=brain_app, server="local")
    seconds = time.perf_counter() - start
    assert_same_geometry(labels, volume)
    assert labels.array.shape == volume.array.shape and labels.array.dtype == np.uint8
    score = dice(labels.array, reference.array)
    ml, ref_ml = labels.physical_volume_ml(), reference.physical_volume_ml()
    print(f"spacing {spacing}: size {volume.size}, Dice {score:.4f}, brain {ml:.0f} ml "
          f"(reference {ref_ml:.0f} ml), {seconds:.1f} s")
    assert score >= 0.92
    assert abs(ml - ref_ml) <= 0.20 * ref_ml   # the network labels ~12 % more than the reference at 1 mm


# -- 2. each app states what it expects; implausible runs are said, or refused in strict mode --
from clara_napari.cli import main  # noqa: E402
from clara_napari.core.config import parse_config  # noqa: E402
from clara_napari.core.errors import ConfigError, ImplausibleError, VolumeError  # noqa: E402
from clara_napari.core.expectations import (check_input, check_output, dicom_modality,  # noqa: E402
                                            label_volumes_ml)

from conftest import bundled_config  # noqa: E402


@pytest.fixture(scope="module")
def chest_ct(chest_ct_path) -> Volume:
    return read_volume(chest_ct_path)


@pytest.fixture(scope="module")
def lung_app(model_repository):
    return resolve_app("lung_ct")


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


def run_cli(tmp_path, app: str, source, *extra):
    out, logs = tmp_path / "out", tmp_path / "logs"
    code = main(["run", "--app", app, "--input", str(source), "--output", str(out), "--logs", str(logs),
                 "--no-publish", "--server", "local", "--threads", "2", *extra])
    return code, out, logs


@pytest.mark.slow
def test_t1_through_the_lung_app_warns_and_strict_refuses(tmp_path, mr_t1_path, capsys, restore_root_logging):
    code, out, logs = run_cli(tmp_path / "a", "lung_ct", mr_t1_path)
    stdout = capsys.readouterr().out
    print(stdout)
    assert code == 0 and (out / "mr_t1_colin27.mhd").is_file()
    line = stdout.splitlines()[0]
    assert "lung 0 ml" in line
    assert "WARNING: input: the 1st intensity percentile is 0, where a chest CT in Hounsfield units has at most -500." in line
    assert "WARNING: result: lung is 0 ml, where 500 to 9000 ml is plausible" in line
    log_text = "".join(p.read_text() for p in logs.iterdir())
    assert "WARNING" in log_text and "lung is 0 ml" in log_text

    code, out, _ = run_cli(tmp_path / "b", "lung_ct", mr_t1_path, "--strict")
    captured = capsys.readouterr()
    assert code == 1 and (not out.exists() or not any(out.iterdir()))
    assert captured.err.startswith("FAILED ") and "refused (strict)" in captured.err


def test_ct_through_the_brain_app_is_refused_in_strict_mode_before_inference(tmp_path, chest_ct_path, capsys,
                                                                              restore_root_logging):
    code, out, _ = run_cli(tmp_path, "brain_extraction_t1", chest_ct_path, "--strict")
    captured = capsys.readouterr()
    assert code == 1
    assert not out.exists() or not any(out.iterdir())
    assert "the 1st intensity percentile is -1013, where a T1-weighted MRI of the head has at least -100" in captured.err


@pytest.mark.slow
def test_ct_through_the_brain_app_warns(chest_ct, brain_app, caplog):
    # a 200 x 200 x 20 mm piece of the chest (one 160^3 window at 1 mm) keeps the run short
    piece = chest_ct.with_array(np.ascontiguousarray(chest_ct.array[20:40, 150:470, 100:420]))
    with caplog.at_level("WARNING", logger="clara_napari.api"):
        result = cn.run_app(piece, app=brain_app, server="local")
    print(result.volumes_ml, result.warnings)
    assert result.warnings[0].startswith("input: the 1st intensity percentile is -")
    assert "where a T1-weighted MRI of the head has at least -100" in result.warnings[0]
    assert set(result.volumes_ml) == {"brain"}
    assert any("intensity percentile" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_all_zero_volume_warns_and_strict_refuses(brain_app):
    zero = Volume(np.zeros((64, 64, 64), np.float32), spacing=(1.0, 1.0, 1.0))
    result = cn.run_app(zero, app=brain_app, server="local")
    print(result.volumes_ml, result.warnings)
    assert result.warnings[0] == "input: every voxel is 0; the volume holds no image."
    assert result.warnings[-1].startswith("result: brain is ")
    with pytest.raises(ImplausibleError, match=r"the in-memory volume: refused \(strict\): input: every voxel is 0"):
        cn.segment(zero, app=brain_app, server="local", strict=True)


@pytest.mark.slow
def test_the_bundled_t1_is_plausible_and_its_line_states_the_brain_volume(tmp_path, mr_t1_path, capsys,
                                                                         restore_root_logging):
    code, out, _ = run_cli(tmp_path, "brain_extraction_t1", mr_t1_path, "--strict")
    line = capsys.readouterr().out.splitlines()[0]
    assert code == 0 and (out / "mr_t1_colin27.mhd").is_file()
    assert line.startswith("mr_t1_colin27.nii.gz: wrote mr_t1_colin27.mhd in ") and line.endswith("; brain 1937 ml")


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

    from conftest import threshold_model, write_app

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

from conftest import brain_app as brain_app_with  # noqa: E402


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


@pytest.mark.slow
def test_tta_left_right_on_the_bundled_t1(tmp_path, t1, t1_mask):
    start = time.perf_counter()
    labels = cn.segment(t1, app=brain_app_with(tmp_path / "lr", tta=[0]), server="local")
    seconds = time.perf_counter() - start
    score = dice(labels.array, t1_mask.array)
    print(f"TTA left-right: Dice {score:.4f} in {seconds:.1f} s")
    # measured: 0.9412 (0.9407 without TTA); mirroring all three axes gives 0.9315: deepbet never saw
    # upside-down heads, so only the left-right mirror is worth its time (brain app README)
    assert score >= 0.93


# -- 5. a second, independent brain: the MNI152 template nilearn ships -------------------------
@pytest.mark.slow
def test_brain_app_on_the_mni152_template(tmp_path, brain_app):
    """nilearn's wheel holds the ICBM152 2009a T1 template (1 mm, 197 x 233 x 189, uint8) already
    skull-stripped; its brain mask is the template above 0.2 of its maximum. No download."""
    pytest.importorskip("nilearn")
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask, struct

    template = read_volume(struct.MNI152_FILE_PATH)
    nib.save(load_mni152_brain_mask(), tmp_path / "mask.nii.gz")
    mask = read_volume(tmp_path / "mask.nii.gz")
    assert template.size == (197, 233, 189) and template.spacing == (1.0, 1.0, 1.0)
    assert mask.same_grid(template)
    start = time.perf_counter()
    result = cn.run_app(template, app=brain_app, server="local")
    seconds = time.perf_counter() - start
    assert_same_geometry(result.labels, template)
    score = dice(result.labels.array, mask.array)
    print(f"MNI152: Dice {score:.4f}, brain {result.volumes_ml['brain']:.0f} ml "
          f"(mask {mask.physical_volume_ml():.0f} ml), {seconds:.1f} s, warnings {result.warnings}")
    assert score >= 0.93   # measured 0.958
    assert result.warnings == []
