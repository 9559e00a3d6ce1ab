"""Build the lung CT app's model: a small, hand-made ONNX graph (NOT a trained network).

No pretrained lung CT network can be had offline here, so the lung app's model is an honest
air-density classifier standing in for one: it smooths the normalised CT with a 3x3x3 mean
filter and maps it through a steep logistic centred on -400 HU, giving two channels
(0 = not air-density, 1 = air-density). The app's post-transforms turn air-density into lungs
(air connected to the in-plane border — outside the body — is removed, the largest components kept).

Input ``x``: ``[N, 1, 320, 320, 64]`` float32, CT clipped to [-1500, 500] HU and scaled to [0, 1]
(as the app's ScaleIntensityRange does). Output ``y``: ``[N, 2, 320, 320, 64]`` probabilities.

    .venv/bin/pip install onnx && .venv/bin/python scripts/build_lung_air_model.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parents[1] / "clara_napari" / "data" / "sample_data" / "models" / "lung_air_density" / "1" / "model.onnx"
A_MIN, A_MAX = -1500.0, 500.0
THRESHOLD_HU = -400.0
STEEPNESS = 60.0   # per unit of normalised intensity: ±0.05 (±100 HU) around the threshold → 5 % / 95 %


def build() -> onnx.ModelProto:
    threshold = (THRESHOLD_HU - A_MIN) / (A_MAX - A_MIN)
    kernel = np.full((1, 1, 3, 3, 3), 1.0 / 27.0, dtype=np.float32)
    inits = [
        numpy_helper.from_array(kernel, "mean_kernel"),
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array(STEEPNESS, dtype=np.float32), "steepness"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "mean_kernel"], ["smooth"], pads=[1, 1, 1, 1, 1, 1]),
        helper.make_node("Sub", ["threshold", "smooth"], ["below"]),
        helper.make_node("Mul", ["below", "steepness"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_air"]),
        helper.make_node("Sub", ["one", "p_air"], ["p_other"]),
        helper.make_node("Concat", ["p_other", "p_air"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "lung_air_density",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 320, 320, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 320, 320, 64])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clara-napari")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(OUT))
    print(f"wrote {OUT}")
