"""Runtimes: what executes a model file in this process (the local backend, the embedded server's model).

A Triton model repository names a model's format (``platform`` / ``backend`` in ``config.pbtxt``);
this layer maps it to the runtimes that can run it here:

=======================================  ==================  =====================================
format (``config.pbtxt``)                file                runtimes (first = default)
=======================================  ==================  =====================================
``platform: "onnxruntime_onnx"``         ``model.onnx``      ``openvino`` (when installed), ``onnxruntime``
``backend: "openvino"``                  ``model.xml/.bin``  ``openvino``
``platform: "pytorch_libtorch"``         ``model.pt``        ``torch`` (the optional extra)
=======================================  ==================  =====================================

OpenVINO runs on the CPU with the ``f32`` precision hint: never bf16, whose error (max |Δ| ~0.9 on
deepbet) would silently change results. :func:`open_engine` returns an :class:`Engine` that any
number of threads may call at once (one OpenVINO infer request per thread); the loaded model is
cached per process, and OpenVINO keeps its compiled blobs in a per-user, owner-only cache folder
so that a second start is fast. Every runtime is imported lazily.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError

#: runtime names a user may ask for
RUNTIMES = ("openvino", "onnxruntime", "torch")

#: model format (Triton platform or backend name) → runtimes able to run it, preferred first
FORMAT_RUNTIMES = {
    "onnxruntime_onnx": ("openvino", "onnxruntime"),
    "onnxruntime": ("openvino", "onnxruntime"),
    "openvino": ("openvino",),
    "pytorch_libtorch": ("torch",),
    "pytorch": ("torch",),
}

#: the file Triton looks for in a version folder when config.pbtxt names none
DEFAULT_FILES = {"onnxruntime_onnx": "model.onnx", "onnxruntime": "model.onnx", "openvino": "model.xml",
                 "pytorch_libtorch": "model.pt", "pytorch": "model.pt", "python": "model.py"}

_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}


class Engine(Protocol):
    """A loaded model: named float arrays in, named arrays out; safe to call from many threads."""

    runtime: str
    input_names: list[str]
    output_names: list[str]
    description: str

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str], *, copy: bool = True) -> list[np.ndarray]:
        """Outputs in the order of ``outputs``; ``copy=False`` allows views valid until this thread's next call."""

    def has_input(self, name: str) -> bool: ...

    def has_output(self, name: str) -> bool: ...


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s Python package can be imported here (without importing it)."""
    module = _MODULES.get(runtime)
    return module is not None and importlib.util.find_spec(module) is not None


def is_supported_format(model_format: str) -> bool:
    return model_format in FORMAT_RUNTIMES


def choose_runtime(model_format: str, requested: str | None = None, *, where: str = "", preferred: str = "") -> str:
    """The runtime that runs ``model_format``: ``requested`` if given (checked), else ``preferred`` (the
    model's own ``clara_napari_runtime`` parameter) where it is possible and installed, else the fastest
    installed."""
    where = f"{where}: " if where else ""
    choices = FORMAT_RUNTIMES.get(model_format)
    if choices is None:
        raise ConfigError(f"{where}models of format {model_format!r} cannot run in this process "
                          f"(formats: {', '.join(sorted(FORMAT_RUNTIMES))}).")
    if requested:
        requested = requested.strip().lower()
        if requested not in RUNTIMES:
            raise ConfigError(f"{where}unknown runtime {requested!r} (runtimes: {', '.join(RUNTIMES)}).")
        if requested not in choices:
            raise ConfigError(f"{where}a {model_format!r} model cannot run on {requested} "
                              f"(it runs on: {', '.join(choices)}).")
        if not installed(requested):
            raise ConfigError(f"{where}the {requested} runtime is not installed (pip install {requested}).")
        return requested
    for runtime in ([preferred] if preferred in choices else []) + list(choices):
        if installed(runtime):
            return runtime
    raise ConfigError(f"{where}no runtime for {model_format!r} models is installed "
                      f"(pip install {choices[0]}).")


def default_threads(threads: int | None) -> int:
    return int(threads) if threads and threads > 0 else (os.cpu_count() or 1)


_CACHE: OrderedDict[tuple, Engine] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def open_engine(model_file: str | Path, model_format: str, *, runtime: str | None = None,
                threads: int | None = None, preferred: str = "") -> Engine:
    """The engine running ``model_file`` (a ``model_format`` model), loaded once per process.

    A file changed on disk (size or time) is loaded again; the last few engines stay cached.
    """
    path = Path(model_file)
    chosen = choose_runtime(model_format, runtime, where=str(path), preferred=preferred)
    threads = default_threads(threads)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model file ({exc.strerror or exc}).") from None
    key = (chosen, str(path.resolve()), stat.st_size, stat.st_mtime_ns, threads)
    with _CACHE_LOCK:
        engine = _CACHE.get(key)
        if engine is not None:
            _CACHE.move_to_end(key)
            return engine
        engine = _load(chosen, path, model_format, threads)
        _CACHE[key] = engine
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return engine


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _load(runtime: str, path: Path, model_format: str, threads: int) -> Engine:
    if runtime == "openvino":
        from .openvino import OpenVinoEngine

        return OpenVinoEngine(path, threads=threads)
    if runtime == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads)
    from .torchscript import TorchScriptEngine

    return TorchScriptEngine(path, threads=threads)
