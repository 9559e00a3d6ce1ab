"""A real python-backend model that answers slowly (``delay`` seconds per call), for the tests of
timeouts, signals and readiness: its output is ``output`` of the input ``x`` (a numpy expression)."""
from __future__ import annotations

from clara_napari.core.triton.locations import python_paths

PROGRAM = '''
import sys
sys.path[:0] = {paths!r}
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep({delay})
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", {output})]))
        return out
'''


def slow_model_program(delay: float, output: str = "(x * 2).astype(np.float32)") -> str:
    """The ``model.py`` of a model that sleeps ``delay`` s per call and returns ``output``."""
    return PROGRAM.format(paths=python_paths(), delay=delay, output=output)
