"""The in-process backend: ONNX models from a Triton model repository, run by onnxruntime."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelMismatchError
from ..model_repository import ModelSpec, find_model, list_models
from .base import pick_tensor


class OnnxModel:
    """A model handle running ``model.onnx`` with onnxruntime on the CPU."""

    def __init__(self, spec: ModelSpec, model_file: Path, *, threads: int | None = None,
                 input_name: str = "", output_name: str = "") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"{model_file}: onnxruntime cannot load the model ({str(exc).splitlines()[0][:200]}).") from None
        self.spec = spec
        self.input = pick_tensor(spec.inputs, input_name, "input", spec.name)
        self.output = pick_tensor(spec.outputs, output_name, "output", spec.name)
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        if self.input.name not in onnx_inputs or self.output.name not in onnx_outputs:
            raise ModelMismatchError(
                f"{model_file}: config.pbtxt names input {self.input.name!r} / output {self.output.name!r}, the ONNX "
                f"graph has inputs {sorted(onnx_inputs)} / outputs {sorted(onnx_outputs)}.")
        self.max_batch_size = spec.max_batch_size
        self.threads = options.intra_op_num_threads
        self.description = f"local onnxruntime ({self.threads} threads)"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.max_batch_size == 0:
            return np.stack([self._run(item) for item in batch])
        return self._run(batch)

    def _run(self, array: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(array, dtype=self.input.dtype)
        try:
            return self.session.run([self.output.name], {self.input.name: feed})[0]
        except Exception as exc:  # onnxruntime raises its own exception types (e.g. a window size the network cannot take)
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ModelMismatchError(f"{self.spec.name}: onnxruntime cannot run the model on input shape "
                                     f"{list(feed.shape)} ({reason}).") from None

    def close(self) -> None:
        self.session = None


class LocalBackend:
    """``--server local``: no server, the model runs in this process."""

    description = "local onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def open(self, repository: Path, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", **_: object) -> OnnxModel:
        spec = find_model(repository, model_name)
        if spec.runtime not in ("onnxruntime_onnx", "onnxruntime"):
            raise ConfigError(f"{spec.path}: the local backend runs ONNX models only, this one is {spec.runtime!r}.")
        return OnnxModel(spec, spec.model_file(version), threads=self.threads, input_name=input_name,
                         output_name=output_name)

    def list_models(self, repository: Path | None = None) -> list[str]:
        """The models of ``repository`` (default: the bundled one), as ``clara-napari models`` prints them."""
        if repository is None:
            from ..apps import bundled_model_repository

            repository = bundled_model_repository()
        rows = [f"local (in process) {repository}"]
        for spec in list_models(repository):
            runnable = spec.runtime in ("onnxruntime_onnx", "onnxruntime")
            state = "READY" if runnable else f"UNAVAILABLE (the local backend cannot run {spec.runtime!r})"
            rows.append(f"{spec.name:<28} version -    {state}  in "
                        + ", ".join(t.describe() for t in spec.inputs) + "  out "
                        + ", ".join(t.describe() for t in spec.outputs) + f"  max_batch {spec.max_batch_size}")
        return rows

    def close(self) -> None:
        pass
