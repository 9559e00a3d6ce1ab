"""Shared by integration/test_security_server.py and unit/test_security_server_rules.py (definitions both use)."""
from __future__ import annotations

import shutil

import pytest

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.triton.locations import python_paths

MODELS = DATA_ROOT / "sample_data" / "models"
LUNG = "lung_air_density"

PY_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
'''
PY_MODEL = '''
import sys
sys.path[:0] = {paths!r}
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype(np.float32))]))
        return out
'''
#: what an attacker's model.py would do: leave a marker file (it must never run)
EVIL_MODEL = "open({marker!r}, 'w').write('pwned')\n" + PY_MODEL


def _config(name: str, onnx: bool = False) -> str:
    text = PY_CONFIG.format(name=name)
    return text.replace('backend: "python"', 'platform: "onnxruntime_onnx"') if onnx else text


# -- items 1 and 9: the running embedded server ---------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository with an ONNX model, a python-backend model and one model that is not wanted
    (its model.py would leave a marker if it ever ran)."""
    root = tmp_path_factory.mktemp("secrepo")
    shutil.copytree(MODELS / LUNG, root / LUNG)
    (root / "double" / "1").mkdir(parents=True)
    (root / "double" / "config.pbtxt").write_text(_config("double"))
    (root / "double" / "1" / "model.py").write_text(PY_MODEL.format(paths=python_paths()))
    (root / "unwanted" / "1").mkdir(parents=True)
    (root / "unwanted" / "config.pbtxt").write_text(_config("unwanted"))
    marker = root.parent / (root.name + "-unwanted-ran")
    (root / "unwanted" / "1" / "model.py").write_text(EVIL_MODEL.format(marker=str(marker), paths=python_paths()))
    return root
