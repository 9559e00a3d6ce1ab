"""A latency-bound app for the scale-out tests and bench (tests/integration/test_fleet.py, tests/integration/test_dask_runs.py,
scripts/bench_scale.py).

The model is a real Triton python-backend model: it waits a fixed time per request (so the
cores are not the limit, the server's latency is) and returns two-channel 'probabilities'
``[1 - s, s]`` with ``s = sigmoid(8 (x - 0.5))`` — smooth, so gaussian blending of overlapping
windows gives float sums whose order matters. The app around it is a plain Clara config
(scale intensities, scanning windows, argmax, write), in a temporary folder with its own
``models/`` repository.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clara_napari.core.triton.locations import python_paths

MODEL = "latency_sigmoid"

MODEL_PY = '''
import sys
sys.path[:0] = [p for p in {paths!r} if p not in sys.path]
import time
import numpy as np
import triton_python_backend_utils as pb_utils

DELAY = {delay!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(DELAY)
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy().astype(np.float32)
            s = (1.0 / (1.0 + np.exp(-8.0 * (x - 0.5)))).astype(np.float32)
            y = np.concatenate([1.0 - s, s], axis=1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
'''

CONFIG_PBTXT = '''name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2, -1, -1, -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]
'''


def write_latency_model(repository: Path, *, delay_s: float = 0.05, instances: int = 1, max_batch: int = 4,
                        name: str = MODEL) -> Path:
    """A python-backend model ``name`` in ``repository`` that waits ``delay_s`` per request."""
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(CONFIG_PBTXT.format(name=name, max_batch=max_batch, instances=instances))
    (folder / "1" / "model.py").write_text(MODEL_PY.format(paths=python_paths(), delay=float(delay_s)))
    return folder


def write_latency_app(folder: Path, *, delay_s: float = 0.05, instances: int = 1, roi=(16, 16, 16),
                      overlap: float = 0.25, in_flight: int = 2, protocol: str = "HTTP") -> Path:
    """An app folder (config + ``models/``) running the latency model in scanning windows."""
    folder = Path(folder)
    write_latency_model(folder / "models", delay_s=delay_s, instances=instances)
    config = {
        "batch_size": 1,
        "use_scanning_window": True,
        "pre_transforms": [
            {"name": "LoadNifti", "args": {"fields": "image"}},
            {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}},
            {"name": "ScaleIntensityRange", "args": {"fields": "image", "a_min": 0, "a_max": 1000,
                                                     "b_min": 0.0, "b_max": 1.0, "clip": True}},
        ],
        "inferer": {"name": "TRTISScanWindowInferer", "args": {
            "model_name": MODEL, "protocol": protocol, "output_type": "RAW", "roi_size": list(roi),
            "overlap": overlap, "blending": "gaussian", "batch_size": 1, "requests_in_flight": in_flight}},
        "model_loader": {"name": "TRTISModelLoader", "args": {"model_spec_file_name": "{PBTXT_PATH}"}},
        "post_transforms": [
            {"name": "ArgmaxAcrossChannels", "args": {"fields": "model", "dtype": "uint8"}},
            {"name": "RestoreOriginalShape", "args": {"field": "model", "src_field": "image", "is_label": True}},
        ],
        "writers": [{"name": "WriteNifti", "args": {"field": "model", "dtype": "uint8"}}],
        "labels": {"1": {"name": "bright", "color": "#f5a623"}},
    }
    (folder / "config_inference.json").write_text(json.dumps(config, indent=2))
    return folder


def write_volumes(folder: Path, count: int, shape=(24, 28, 32), seed: int = 0) -> list[Path]:
    """``count`` smooth random volumes (z, y, x arrays; values about 0..1000) as ``.mha`` files."""
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        array = gaussian_filter(rng.normal(500.0, 400.0, size=shape), 1.5).astype(np.float32)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.5, 0.5, 0.5 + 0.25 * index))
        image.SetOrigin((-10.0 - index, 20.5, 3.25))
        path = folder / f"study_{index:02d}.mha"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths
