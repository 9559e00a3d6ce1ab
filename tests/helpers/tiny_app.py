"""A tiny real app: a dynamic-size ONNX segmentation model built with onnx (sigmoid of the voxel
value, labels where x > 0) in the app's own ``models/`` — fast enough to run through every entry point."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clara_napari.core.volume import Volume

TINY = "tiny_seg"


def tiny_app(folder: Path, roi: int = 16) -> Path:
    """An app with a real (tiny, dynamic-size) ONNX segmentation model built here with onnx:
    channel 1 = sigmoid(x), channel 0 = sigmoid(-x) (labels: x > 0); windows of ``roi``³."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["p"]),
         helper.make_node("Neg", ["x"], ["minus_x"]),
         helper.make_node("Sigmoid", ["minus_x"], ["n"]),
         helper.make_node("Concat", ["n", "p"], ["y"], axis=1)],
        TINY, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "a", "b", "c"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "models" / TINY / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "models" / TINY / "1" / "model.onnx"))
    (folder / "models" / TINY / "config.pbtxt").write_text(
        f'name: "{TINY}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, -1, -1, -1 ] } ]\n')
    (folder / "config_inference.json").write_text(json.dumps({
        "pre_transforms": [{"name": "LoadNifti", "args": {"fields": "image"}},
                           {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}}],
        "inferer": {"name": "TRTISScanWindowInferer",
                    "args": {"model_name": TINY, "roi_size": [roi] * 3, "overlap": 0.25, "batch_size": 1,
                             "requests_in_flight": 2}},
        "model_loader": {"name": "TRTISModelLoader",
                         "args": {"model_spec_file_name": "{MODEL_REPOSITORY}/" + TINY + "/config.pbtxt"}},
        "post_transforms": [{"name": "ArgmaxAcrossChannels", "args": {"fields": "model", "dtype": "uint8"}}],
        "writers": [{"name": "WriteNifti", "args": {"field": "model", "dtype": "uint8"}}]}))
    return folder


def small_volume(seed: int, shape=(20, 20, 20)) -> Volume:
    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return Volume(array, spacing=(0.9, 1.1, 1.3), origin=(-3.5, 7.25, 11.0))
