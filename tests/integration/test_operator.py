"""The headless operator: the Clara Deploy contract (folders, outputs, publish bundle, apps, classification)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.volume import Volume, write_volume

ROOT = Path(__file__).resolve().parents[2]
CT = DATA_ROOT / "sample_data/chest_ct/chest_ct_lung2.nii.gz"
T1 = DATA_ROOT / "sample_data/mr_t1/mr_t1_colin27.nii.gz"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_ct():
    """The real chest CT, cut to 20 slices so each run takes about a second."""
    volume = cn.read_volume(CT)
    return volume.with_array(np.ascontiguousarray(volume.array[20:40]), path=None)


@pytest.fixture
def clara_env(tmp_path, monkeypatch):
    folders = {}
    for key, env in [("input", "NVIDIA_CLARA_INPUT"), ("output", "NVIDIA_CLARA_OUTPUT"),
                     ("publish", "NVIDIA_CLARA_PUBLISHING"), ("logs", "NVIDIA_CLARA_LOGS")]:
        folders[key] = tmp_path / key
        monkeypatch.setenv(env, str(folders[key]))
    folders["input"].mkdir()
    monkeypatch.delenv("NVIDIA_CLARA_TRTISURI", raising=False)
    monkeypatch.delenv("NVIDIA_CLARA_CONFIG_INFERENCE", raising=False)
    return folders


@pytest.mark.triton
def test_environment_contract_lung_metaimage(clara_env, small_ct):
    """Only the four NVIDIA_CLARA_* folders set, --app lung_ct, embedded Triton, a MetaImage CT in."""
    source = write_volume(small_ct, clara_env["input"] / "chest.mhd")
    before = tree_digest(clara_env["input"])
    assert main(["run", "--app", "lung_ct"]) == 0
    out = cn.read_volume(clara_env["output"] / "chest.mhd")
    original = cn.read_volume(source)
    assert out.same_grid(original) and out.array.dtype == np.uint8
    assert out.array.any()
    assert (clara_env["output"] / "chest.raw").is_file()
    meta = json.loads((clara_env["publish"] / "config.meta").read_text())
    assert meta["density"] == "chest.mhd" and meta["seg_masks"] == ["chest.out.mhd"]
    assert meta["settings"] == "config_render.json" and meta["name"] == "lung_air_density"
    for name in [meta["density"], *meta["seg_masks"], meta["settings"]]:
        assert (clara_env["publish"] / name).is_file()
    density = cn.read_volume(clara_env["publish"] / meta["density"])
    mask = cn.read_volume(clara_env["publish"] / meta["seg_masks"][0])
    assert density.same_grid(original) and np.array_equal(density.array, original.array)
    assert np.array_equal(mask.array, out.array)
    assert "ElementDataFile = chest.out.raw" in (clara_env["publish"] / "chest.out.mhd").read_text()
    render = json.loads((clara_env["publish"] / "config_render.json").read_text())
    assert {"Camera", "Light", "TransferFunction", "View", "RenderSettings"} <= set(render)
    assert list((clara_env["logs"]).glob("clara-napari-*.log"))
    assert tree_digest(clara_env["input"]) == before
    # keys sorted, indent 4: the operator's own format
    assert (clara_env["publish"] / "config.meta").read_text() == json.dumps(meta, indent=4, sort_keys=True) + "\n"


def test_three_formats_in_one_run(tmp_path, small_ct):
    from helpers.dicom_series import write_dicom_series

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "a_nifti.nii.gz")
    write_volume(small_ct, inputs / "b_meta.mha")
    write_dicom_series(inputs / "c_dicom", "1.2.826.0.1.3680043.2.1125.77", small_ct.array[:, ::4, ::4].astype(np.int16),
                       spacing=(2.5, 2.5, 5.0))
    (inputs / "notes.txt").write_text("not a volume")
    before = tree_digest(inputs)
    code = main(["run", "--app", "lung_ct", "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    assert code == 0
    for stem in ("a_nifti", "b_meta", "c_dicom"):
        out = cn.read_volume(tmp_path / "out" / f"{stem}.mhd")
        src = cn.read_volume(next(p for p in inputs.iterdir() if p.name.startswith(stem)))
        assert out.same_grid(src)
        meta = json.loads((tmp_path / "pub" / stem / "config.meta").read_text())
        assert (tmp_path / "pub" / stem / meta["seg_masks"][0]).is_file()
    assert tree_digest(inputs) == before


def test_first_only_and_overwrite(tmp_path, small_ct, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "a.nii.gz")
    write_volume(small_ct, inputs / "b.nii.gz")
    args = ["run", "--app", "lung_ct", "--server", "local", "--input", str(inputs), "--output", str(tmp_path / "out"),
            "--no-publish", "--logs", str(tmp_path / "logs")]
    assert main(args + ["--first-only"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mhd", "a.raw"]
    stamp = (tmp_path / "out" / "a.raw").stat().st_mtime_ns
    assert main(args) == 1  # a.mhd exists: refused without --overwrite, b still processed
    err = capsys.readouterr().err
    assert "a.mhd: exists already (use --overwrite" in err and "Traceback" not in err
    assert (tmp_path / "out" / "b.mhd").is_file()
    assert (tmp_path / "out" / "a.raw").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0


def test_failures_are_one_line_each_and_leave_nothing(tmp_path, small_ct, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "good.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"this is not a volume at all")
    flat = Volume(np.zeros((1, 8, 8), np.int16))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(inputs / "flat.mha"))
    del flat
    before = tree_digest(inputs)
    code = main(["run", "--app", "lung_ct", "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    assert code == 1
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("FAILED")]
    assert len(err_lines) == 2
    assert any("broken.nii.gz" in ln for ln in err_lines) and any("flat.mha" in ln and "2D" in ln for ln in err_lines)
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert produced == ["good.mhd", "good.raw"]
    assert not [p for p in (tmp_path / "pub").rglob("*") if p.name.startswith(".")]
    assert tree_digest(inputs) == before


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    app = tmp_path / "app"
    app.mkdir()
    (app / "config_inference.json").write_text(json.dumps({
        "pre_transforms": [{"name": "LoadNifti"}, {"name": "ScaleIntensityRagne", "args": {}}],
        "inferer": {"name": "TRTISScanWindowInferer", "args": {"model_name": "lung_air_density"}}}))
    assert main(["run", "--app", str(app), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pre_transforms[1].name" in err[0] and "ScaleIntensityRange" in err[0]


def test_new_app_label_name_reaches_publish_bundle(tmp_path, small_ct):
    app_dir = tmp_path / "my_lungs"
    assert main(["new-app", str(app_dir), "--from", "lung_ct"]) == 0
    assert (app_dir / "models").is_symlink() and (app_dir / "README.md").is_file()
    config = json.loads((app_dir / "config_inference.json").read_text())
    config["labels"]["1"]["name"] = "both lungs"
    (app_dir / "config_inference.json").write_text(json.dumps(config, indent=2))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "ct.nii.gz")
    assert main(["run", "--app", str(app_dir), "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")]) == 0
    meta = json.loads((tmp_path / "pub" / "config.meta").read_text())
    assert meta["labels"]["1"]["name"] == "both lungs"
    assert main(["new-app", str(app_dir)]) == 2  # not empty: refused


def test_publish_data_format(tmp_path, small_ct):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "ct.nii.gz")
    assert main(["run", "--app", "lung_ct", "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs"),
                 "--publish-format", "data"]) == 0
    meta = json.loads((tmp_path / "pub" / "config.meta").read_text())
    assert meta["data"] == [{"file": "ct.mhd", "order": "DXYZ"}, {"file": "ct.out.mhd", "order": "MXYZ"}]


def test_app_logging_config_is_used(tmp_path, small_ct, restore_root_logging):
    app_dir = tmp_path / "app"
    main(["new-app", str(app_dir), "--from", "lung_ct"])
    (app_dir / "logging_config.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        # a relative filename is taken inside the run's logs folder (the only place a config may log to)
        "handlers": {"f": {"class": "logging.FileHandler", "filename": "app.log", "level": "INFO"}},
        "root": {"handlers": ["f"], "level": "INFO"}}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_ct, inputs / "ct.nii.gz")
    assert main(["run", "--app", str(app_dir), "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--no-publish", "--logs", str(tmp_path / "logs")]) == 0
    assert "ct.nii.gz" in (tmp_path / "logs" / "app.log").read_text()


def test_python_dash_m_and_apps_listing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "clara_napari", "apps", "--json"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    apps = {row["name"]: row for row in json.loads(result.stdout)}
    assert apps["lung_ct"]["model"] == "lung_air_density" and apps["lung_ct"]["labels"] == {"1": "lung"}
    assert apps["brain_extraction_t1"]["labels"] == {"1": "brain"}


# -- classification --------------------------------------------------------------------------
def _classifier_app(tmp_path: Path) -> Path:
    """An app whose model (built here with onnx) scores 3 classes from the mean intensity."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[-4.0, 0.0, 4.0]], dtype=np.float32)   # [1, 3]: dark → class 0, bright → class 2
    bias = np.array([2.0, 0.5, -2.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"], axis=1)],
        "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    app = tmp_path / "classify"
    (app / "models" / "toy_classifier" / "1").mkdir(parents=True)
    onnx.save(model, str(app / "models" / "toy_classifier" / "1" / "model.onnx"))
    (app / "models" / "toy_classifier" / "config.pbtxt").write_text(
        'name: "toy_classifier"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')
    (app / "config_inference.json").write_text(json.dumps({
        "pre_transforms": [{"name": "LoadNifti", "args": {"fields": "image"}},
                           {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}},
                           {"name": "ScaleIntensityRange", "args": {"fields": "image", "a_min": 0, "a_max": 100,
                                                                    "b_min": 0, "b_max": 1, "clip": True}}],
        "inferer": {"name": "TRTISSimpleInferer", "args": {"model_name": "toy_classifier",
                                                           "output_type": "CLASSIFICATION"}},
        "writers": [{"name": "ClassificationResultWriter",
                     "args": {"label_names": ["Normal", "Nodule", "Mass"], "threshold": 0.5}}]}))
    return app


def test_classification_writer_csv(tmp_path):
    app = _classifier_app(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(Volume(np.full((8, 9, 10), 95, np.int16)), inputs / "bright.nii.gz")
    write_volume(Volume(np.full((8, 9, 10), 2, np.int16)), inputs / "dark.mha")
    assert main(["run", "--app", str(app), "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")]) == 0
    bright = (tmp_path / "out" / "output-bright.csv").read_text().splitlines()
    dark = (tmp_path / "out" / "output-dark.csv").read_text().splitlines()
    assert bright[0] == "image,threshold,positives,top_classes"
    image, threshold, positives, top = bright[1].split(",")
    assert image == "bright.nii.gz" and threshold == "0.5" and positives == "Mass"
    entries = [e.split(":") for e in top.split()]
    assert [name for name, _ in entries][0] == "Mass"
    probabilities = [float(p) for _, p in entries]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-3
    assert dark[1].split(",")[2] == "Normal"
    # no volume output, no publish bundle for a classifier
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["output-bright.csv", "output-dark.csv"]
    assert not (tmp_path / "pub").exists() or not any((tmp_path / "pub").iterdir())


def test_classification_through_triton(tmp_path):
    app = _classifier_app(tmp_path)
    volume = Volume(np.full((8, 9, 10), 95, np.int16))
    result = cn.run_app(volume, app)  # embedded server serving the app's own models/ folder
    assert result.classification is not None and result.classification.positives == ["Mass"]
    local = cn.run_app(volume, app, server="local")
    assert np.allclose(result.classification.probabilities, local.classification.probabilities, atol=1e-5)
    os.environ.pop("NVIDIA_CLARA_TRTISURI", None)
