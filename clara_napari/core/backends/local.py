"""The in-process backend: models of a Triton model repository run by a runtime of this process.

ONNX models run on OpenVINO (CPU, f32) where it is installed, else onnxruntime; OpenVINO IR on
OpenVINO; TorchScript on torch (see :mod:`clara_napari.core.runtimes`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelMismatchError, ServerError
from ..model_repository import ModelSpec, find_model, list_models
from ..runtimes import Engine, default_threads, is_supported_format, open_engine
from .base import pick_tensor


class RuntimeModel:
    """A model handle running one model file with a runtime of this process."""

    def __init__(self, spec: ModelSpec, model_file: Path, *, threads: int | None = None, runtime: str | None = None,
                 input_name: str = "", output_name: str = "") -> None:
        self.spec = spec
        self.input = pick_tensor(spec.inputs, input_name, "input", spec.name)
        self.output = pick_tensor(spec.outputs, output_name, "output", spec.name)
        engine = open_engine(model_file, spec.runtime, runtime=runtime, threads=threads,
                             preferred=spec.preferred_runtime)
        #: None once closed
        self.engine: Engine | None = engine
        if hasattr(engine, "bind"):  # TorchScript: positions from the config's names
            engine.bind([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        if not engine.has_input(self.input.name) or not engine.has_output(self.output.name):
            raise ModelMismatchError(
                f"{model_file}: config.pbtxt names input {self.input.name!r} / output {self.output.name!r}, the "
                f"model has inputs {sorted(engine.input_names)} / outputs {sorted(engine.output_names)}.")
        self.max_batch_size = spec.max_batch_size
        self.threads = default_threads(threads)
        self.runtime = engine.runtime
        self.description = f"local {engine.description}"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.max_batch_size == 0:
            return np.stack([self._run(item) for item in batch])
        return self._run(batch)

    def _run(self, array: np.ndarray) -> np.ndarray:
        engine = self.engine
        if engine is None:
            raise ServerError(f"{self.spec.name}: the model was closed; open it again to predict.")
        feed = np.ascontiguousarray(array, dtype=self.input.dtype)
        result = engine.run({self.input.name: feed}, [self.output.name])[0]
        if self.max_batch_size and (result.ndim == 0 or result.shape[0] != feed.shape[0]):
            raise ModelMismatchError(f"{self.spec.name}: {engine.runtime} returned shape {list(result.shape)} "
                                     f"for input shape {list(feed.shape)} (a batch of {feed.shape[0]}).")
        return result

    def close(self) -> None:
        self.engine = None  # the engine stays in the per-process cache for the next job


#: the name this class had when it ran ONNX with onnxruntime only
OnnxModel = RuntimeModel


class LocalBackend:
    """``--server local``: no server, the model runs in this process."""

    description = "local"

    def __init__(self, threads: int | None = None, runtime: str | None = None) -> None:
        self.threads = threads
        self.runtime = runtime

    def open(self, repository: Path, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", **_: object) -> RuntimeModel:
        spec = find_model(repository, model_name)
        if not is_supported_format(spec.runtime):
            raise ConfigError(f"{spec.path}: the local backend runs ONNX, OpenVINO and TorchScript models, "
                              f"this one is {spec.runtime!r}.")
        return RuntimeModel(spec, spec.model_file(version), threads=self.threads, runtime=self.runtime,
                            input_name=input_name, output_name=output_name)

    def list_models(self, repository: Path | None = None) -> list[str]:
        """The models of ``repository`` (default: the bundled one), as ``clara-napari models`` prints them."""
        if repository is None:
            from ..apps import bundled_model_repository

            repository = bundled_model_repository()
        rows = [f"local (in process) {repository}"]
        for spec in list_models(repository):
            state = "READY" if is_supported_format(spec.runtime) else \
                f"UNAVAILABLE (the local backend cannot run {spec.runtime!r} models)"
            rows.append(f"{spec.name:<28} version -    {state}  in "
                        + ", ".join(t.describe() for t in spec.inputs) + "  out "
                        + ", ".join(t.describe() for t in spec.outputs) + f"  max_batch {spec.max_batch_size}")
        return rows

    def close(self) -> None:
        pass
