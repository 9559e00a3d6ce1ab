"""Runtimes × model formats: OpenVINO, onnxruntime and torch on ONNX, OpenVINO IR and TorchScript.

The small models are built here, in the test: one 3-D convolution (1 → 2 channels, 3³ kernel, zero
padding) and a sigmoid, with fixed random weights, written as ONNX (``onnx.helper``), converted to
OpenVINO IR (``openvino.convert_model``/``save_model``) and, where torch is installed, as a
TorchScript module carrying the same weights. Every runtime's answer is checked against a NumPy
reference of the same arithmetic, so a runtime that returns something else fails on its own.
"""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core import runtimes
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.backends.local import LocalBackend
from clara_napari.core.errors import ConfigError, ModelMismatchError
from clara_napari.core.model_repository import find_model
from clara_napari.core.runtimes import choose_runtime, open_engine

openvino = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[2]
MODELS = DATA_ROOT / "sample_data" / "models"
BRAIN = "deepbet_brain_t1"

RNG = np.random.default_rng(13)
WEIGHT = RNG.normal(0, 0.3, size=(2, 1, 3, 3, 3)).astype(np.float32)
BIAS = np.array([0.1, -0.2], np.float32)

CONFIG = '''name: "{name}"
{kind}: "{value}"
max_batch_size: 4
input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
output [ {{ name: "{out}" data_type: TYPE_FP32 dims: [ 2, -1, -1, -1 ] }} ]
'''


def reference(batch: np.ndarray) -> np.ndarray:
    """The tiny network in NumPy: zero-padded 3-D cross-correlation, bias, sigmoid."""
    from scipy import ndimage

    out = np.empty((batch.shape[0], 2) + batch.shape[2:], np.float64)
    for n in range(batch.shape[0]):
        for c in range(2):
            out[n, c] = ndimage.correlate(batch[n, 0].astype(np.float64), WEIGHT[c, 0].astype(np.float64),
                                          mode="constant", cval=0.0) + BIAS[c]
    return (1.0 / (1.0 + np.exp(-out))).astype(np.float32)


def write_onnx(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 6, kernel_shape=[3, 3, 3]),
         helper.make_node("Sigmoid", ["c"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "d", "h", "w"])],
        initializer=[numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_torchscript(path: Path) -> None:
    import torch

    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(WEIGHT))
        conv.bias.copy_(torch.from_numpy(BIAS))
    net = torch.nn.Sequential(conv, torch.nn.Sigmoid()).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 1, 8, 8, 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))


def torch_installed() -> bool:
    return runtimes.installed("torch")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A Triton model repository holding the tiny network in every format this machine can write."""
    import openvino as ov

    repo = tmp_path_factory.mktemp("formats")
    write_onnx(repo / "tiny_onnx" / "1" / "model.onnx")
    (repo / "tiny_onnx" / "config.pbtxt").write_text(CONFIG.format(
        name="tiny_onnx", kind="platform", value="onnxruntime_onnx", inp="x", out="y"))
    ir = repo / "tiny_openvino" / "1" / "model.xml"
    ir.parent.mkdir(parents=True)
    ov.save_model(ov.convert_model(str(repo / "tiny_onnx" / "1" / "model.onnx")), str(ir), compress_to_fp16=False)
    (repo / "tiny_openvino" / "config.pbtxt").write_text(CONFIG.format(
        name="tiny_openvino", kind="backend", value="openvino", inp="x", out="y"))
    if torch_installed():
        write_torchscript(repo / "tiny_torch" / "1" / "model.pt")
        (repo / "tiny_torch" / "config.pbtxt").write_text(CONFIG.format(
            name="tiny_torch", kind="platform", value="pytorch_libtorch", inp="INPUT__0", out="OUTPUT__0"))
    return repo


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(2, 1, 12, 10, 9)).astype(np.float32)


COMBINATIONS = [("tiny_onnx", "openvino"), ("tiny_onnx", "onnxruntime"), ("tiny_openvino", "openvino"),
                ("tiny_torch", "torch")]


def _skip_without(model: str) -> None:
    if model == "tiny_torch" and not torch_installed():
        pytest.skip("torch is not installed (the optional extra)")


# -- choosing a runtime ----------------------------------------------------------------------
def test_onnx_runs_on_openvino_by_default():
    assert choose_runtime("onnxruntime_onnx") == "openvino"
    assert choose_runtime("onnxruntime_onnx", "onnxruntime") == "onnxruntime"
    assert choose_runtime("openvino") == "openvino"


@pytest.mark.parametrize("model_format,requested", [("onnxruntime_onnx", "tensorrt"), ("openvino", "onnxruntime"),
                                                    ("pytorch_libtorch", "openvino"), ("tensorflow_savedmodel", None)])
def test_impossible_runtime_choices_are_config_errors(model_format, requested):
    with pytest.raises(ConfigError, match="model.onnx"):
        choose_runtime(model_format, requested, where="model.onnx")


def test_local_backend_refuses_a_runtime_the_format_cannot_use(repository):
    with pytest.raises(ConfigError, match="cannot run on onnxruntime"):
        LocalBackend(runtime="onnxruntime").open(repository, "tiny_openvino")


def test_a_model_file_name_cannot_leave_its_version_folder(tmp_path):
    folder = tmp_path / "escape"
    (folder / "1").mkdir(parents=True)
    (tmp_path / "secret.onnx").write_bytes(b"x")
    (folder / "config.pbtxt").write_text(CONFIG.format(name="escape", kind="platform", value="onnxruntime_onnx",
                                                       inp="x", out="y") + 'default_model_filename: "../../secret.onnx"\n')
    with pytest.raises(ConfigError, match="default_model_filename"):
        find_model(tmp_path, "escape").model_file()


# -- every runtime x format, locally -----------------------------------------------------------
@pytest.mark.parametrize("model,runtime", COMBINATIONS)
def test_every_runtime_and_format_matches_the_reference(repository, batch, model, runtime):
    _skip_without(model)
    handle = LocalBackend(threads=1, runtime=runtime).open(repository, model)
    try:
        assert handle.runtime == runtime
        out = handle.predict(batch)
    finally:
        handle.close()
    assert out.shape == (2, 2, 12, 10, 9) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(batch), atol=2e-5)


def test_openvino_compiles_in_f32_never_bf16(repository):
    engine = open_engine(repository / "tiny_onnx" / "1" / "model.onnx", "onnxruntime_onnx", runtime="openvino")
    assert engine.precision == "f32"
    assert "f32" in engine.description


def test_engines_are_cached_per_process_and_reloaded_when_the_file_changes(repository, tmp_path):
    model_file = tmp_path / "model.onnx"
    write_onnx(model_file)
    first = open_engine(model_file, "onnxruntime_onnx", runtime="openvino", threads=1)
    assert open_engine(model_file, "onnxruntime_onnx", runtime="openvino", threads=1) is first
    stamp = model_file.stat().st_mtime_ns + 10**9
    os.utime(model_file, ns=(stamp, stamp))
    assert open_engine(model_file, "onnxruntime_onnx", runtime="openvino", threads=1) is not first


def test_openvino_engine_serves_many_threads_at_once(repository, batch):
    """One compiled model, one infer request per thread (a shared request fails with "busy")."""
    engine = open_engine(repository / "tiny_onnx" / "1" / "model.onnx", "onnxruntime_onnx", runtime="openvino",
                         threads=1)
    expected = reference(batch)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(5):
                out = engine.run({"x": batch}, ["y"])[0]
                np.testing.assert_allclose(out, expected, atol=2e-5)
        except BaseException as exc:  # noqa: BLE001  (collected for the main thread, which raises it)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not errors, errors


def test_results_are_not_overwritten_by_the_next_call(repository, batch):
    engine = open_engine(repository / "tiny_onnx" / "1" / "model.onnx", "onnxruntime_onnx", runtime="openvino")
    first = engine.run({"x": batch}, ["y"])[0]
    kept = first.copy()
    engine.run({"x": batch * 3}, ["y"])
    np.testing.assert_array_equal(first, kept)


# -- OpenVINO's on-disk model cache --------------------------------------------------------------
def test_openvino_cache_folder_is_owner_only(tmp_path, monkeypatch):
    from clara_napari.core.runtimes.openvino import CACHE_ENV, cache_dir

    folder = tmp_path / "ovcache"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    monkeypatch.setenv(CACHE_ENV, str(folder))
    assert cache_dir() == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv(CACHE_ENV, str(link))
    assert cache_dir() is None  # a planted link is not followed
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None


def test_default_cache_folder_is_per_user(tmp_path, monkeypatch):
    from clara_napari.core.runtimes.openvino import CACHE_ENV, cache_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = cache_dir()
    assert folder == tmp_path / "xdg" / "clara-napari" / "openvino"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()


# -- the bundled deepbet network ---------------------------------------------------------------
def test_deepbet_runtimes_agree_on_a_real_window():
    from clara_napari.core.apps import resolve_app
    from clara_napari.core.transforms import Sample
    from clara_napari.core.volume import read_volume

    app = resolve_app("brain_extraction_t1")
    sample = Sample(image=read_volume(DATA_ROOT / "sample_data/mr_t1/mr_t1_colin27.nii.gz"))
    for transform in app.config.pre_transforms:
        transform(sample)
    window = np.ascontiguousarray(sample["image"][None, :, 20:116, 40:136, 40:136], dtype=np.float32)
    outs = {}
    for runtime in ("openvino", "onnxruntime"):
        model = LocalBackend(threads=2, runtime=runtime).open(MODELS, BRAIN)
        outs[runtime] = model.predict(window)
        model.close()
    assert outs["openvino"].shape == outs["onnxruntime"].shape == (1, 2, 96, 96, 96)
    assert np.abs(outs["openvino"] - outs["onnxruntime"]).max() < 1e-2
    assert np.mean((outs["openvino"][:, 1] > 0.5) == (outs["onnxruntime"][:, 1] > 0.5)) >= 0.999


def test_openvino_refuses_a_window_the_network_cannot_take():
    model = LocalBackend(threads=1, runtime="openvino").open(MODELS, BRAIN)
    with pytest.raises(ModelMismatchError, match=r"\[1, 1, 40, 32, 32\]"):
        model.predict(np.zeros((1, 1, 40, 32, 32), np.float32))


def test_openvino_never_answers_a_shape_it_cannot_take_with_an_earlier_result():
    """After a good call, a window side deepbet cannot take (40, 48, 33) used to come back with the
    previous call's output (no error), and its writes corrupted memory: a later call in the same
    process crashed. Refused before the compiled model runs, every time; good shapes still run."""
    model = LocalBackend(threads=1, runtime="openvino").open(MODELS, BRAIN)
    rng = np.random.default_rng(5)
    good = rng.random((2, 1, 32, 64, 32), dtype=np.float32)
    first = model.predict(good)
    for side in (40, 48, 33, 40):
        with pytest.raises(ModelMismatchError, match=rf"\[1, 1, {side}, 32, 32\]"):
            model.predict(np.zeros((1, 1, side, 32, 32), np.float32))
    np.testing.assert_array_equal(model.predict(good), first)
    assert model.predict(np.zeros((1, 1, 64, 64, 64), np.float32)).shape == (1, 2, 64, 64, 64)


# -- the same formats through the real embedded Triton server ------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("runtime", [None, "onnxruntime"])
def test_embedded_server_serves_every_format_with_the_runtime_layer(repository, batch, runtime):
    from clara_napari.core.triton.address import TransportOptions, parse_address
    from clara_napari.core.triton.embedded import EmbeddedServer
    from clara_napari.core.triton.model import TritonModel

    models = ["tiny_onnx", "tiny_openvino"] + (["tiny_torch"] if torch_installed() else [])
    expected = reference(batch)
    with EmbeddedServer(repository, threads=1, runtime=runtime) as server:
        assert sorted(server.model_names()) == sorted(models)
        served = (server.workdir / "models" / "tiny_onnx" / "config.pbtxt").read_text()
        assert f'string_value: "{runtime or "openvino"}"' in served and 'backend: "python"' in served
        for name in models:
            model = TritonModel(parse_address(f"http://127.0.0.1:{server.ports['http']}"), name,
                                options=TransportOptions(ready_timeout_s=30))
            try:
                out = model.predict(batch)
            finally:
                model.close()
            assert out.shape == expected.shape, name
            np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=name)


# -- the whole brain app with every runtime ------------------------------------------------------
@pytest.fixture(scope="module")
def brain_labels_by_runtime(mr_t1_path):
    """The bundled T1 segmented by the brain app with each runtime (TorchScript: deepbet's own model.pt)."""
    from clara_napari.core.apps import resolve_app, sample_data_dir
    from clara_napari.core.pipeline import segment_volume
    from clara_napari.core.volume import read_volume

    app = resolve_app("brain_extraction_t1")
    volume = read_volume(mr_t1_path)
    sources = [("openvino", app.model_repository), ("onnxruntime", app.model_repository)]
    if torch_installed():
        sources.append(("torch", sample_data_dir() / "torchscript"))
    labels = {}
    for runtime, repository in sources:
        model = LocalBackend(threads=2, runtime=runtime).open(repository, app.config.model_name)
        try:
            assert model.runtime == runtime
            labels[runtime] = segment_volume(volume, app.config, model).labels
        finally:
            model.close()
    return labels


@pytest.mark.slow
def test_every_runtime_keeps_the_dice_on_the_bundled_t1(brain_labels_by_runtime, brain_mask_path):
    from clara_napari.core.volume import read_volume

    reference = read_volume(brain_mask_path).array > 0
    for runtime, labels in brain_labels_by_runtime.items():
        mask = labels.array > 0
        dice = 2 * np.logical_and(mask, reference).sum() / (mask.sum() + reference.sum())
        assert dice >= 0.940, (runtime, dice)


@pytest.mark.slow
def test_runtimes_agree_on_the_bundled_t1(brain_labels_by_runtime):
    base = brain_labels_by_runtime["onnxruntime"].array
    for runtime, labels in brain_labels_by_runtime.items():
        agreement = float(np.mean(labels.array == base))
        assert agreement >= 0.999, (runtime, agreement)


def test_uncopied_outputs_are_the_same_numbers(repository, batch):
    engine = open_engine(repository / "tiny_onnx" / "1" / "model.onnx", "onnxruntime_onnx", runtime="openvino")
    view = engine.run({"x": batch}, ["y"], copy=False)[0]
    np.testing.assert_allclose(view, reference(batch), atol=2e-5)


def test_a_model_may_name_its_preferred_runtime_and_the_user_overrides_it(repository, tmp_path):
    import shutil

    shutil.copytree(repository / "tiny_onnx", tmp_path / "tiny_onnx")
    config = tmp_path / "tiny_onnx" / "config.pbtxt"
    config.write_text(config.read_text() +
                      'parameters { key: "clara_napari_runtime" value { string_value: "onnxruntime" } }\n')
    assert find_model(tmp_path, "tiny_onnx").preferred_runtime == "onnxruntime"
    assert LocalBackend(threads=1).open(tmp_path, "tiny_onnx").runtime == "onnxruntime"
    assert LocalBackend(threads=1, runtime="openvino").open(tmp_path, "tiny_onnx").runtime == "openvino"
    assert choose_runtime("openvino", preferred="onnxruntime") == "openvino"   # impossible preference: ignored
    assert find_model(MODELS, "lung_air_density").preferred_runtime == "onnxruntime"
