"""onnxruntime on the CPU: ONNX files (the fallback when OpenVINO is missing, or on request)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelMismatchError


class OnnxRuntimeEngine:
    runtime = "onnxruntime"

    def __init__(self, model_file: Path, *, threads: int) -> None:
        import onnxruntime as ort

        from ..errors import first_line

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"{model_file}: onnxruntime cannot load the model ({first_line(exc)}).") from exc
        self.model_file = Path(model_file)
        self.threads = threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.description = f"onnxruntime CPU ({threads} threads)"

    def has_input(self, name: str) -> bool:
        return name in self.input_names

    def has_output(self, name: str) -> bool:
        return name in self.output_names

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str], *, copy: bool = True) -> list[np.ndarray]:
        from ..errors import first_line

        try:  # InferenceSession.run is thread-safe
            return self.session.run(list(outputs), {k: np.ascontiguousarray(v) for k, v in inputs.items()})
        except Exception as exc:  # e.g. a window size the network cannot take
            raise ModelMismatchError(f"{self.model_file}: onnxruntime cannot run the model on input shapes "
                                     f"{[list(a.shape) for a in inputs.values()]} ({first_line(exc, 300)}).") from exc
