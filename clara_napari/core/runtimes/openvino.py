"""OpenVINO on the CPU: ONNX files and OpenVINO IR (``model.xml`` + ``model.bin``).

Compiled with the ``f32`` inference-precision hint (OpenVINO would pick bf16 on CPUs that have
it: faster, but max |Δ| ~0.9 on deepbet's probabilities), the latency hint (one stream, every
thread on one request) and the caller's thread count. A compiled model is shared; each calling
thread gets its own infer request (one request used by two threads fails with "Infer Request is
busy"). Compiled blobs go to :func:`cache_dir` so that the next process starts fast.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelMismatchError

log = logging.getLogger(__name__)

#: set to a folder to move OpenVINO's model cache, or to "off" to disable it
CACHE_ENV = "CLARA_NAPARI_OPENVINO_CACHE"
#: input shapes whose verdict (output shapes, or why not) an engine remembers
MAX_KNOWN_SHAPES = 256


def cache_dir() -> Path | None:
    """This user's folder for OpenVINO's compiled-model cache (mode 0700), or None when unsafe.

    ``$CLARA_NAPARI_OPENVINO_CACHE`` (a folder, or ``off``), else
    ``$XDG_CACHE_HOME/clara-napari/openvino`` (default ``~/.cache``). A folder that is not a real
    directory owned by this user, or that others can write, is not used: a planted blob must not
    become the model that runs.
    """
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    if setting:
        folder = Path(setting).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = Path(base).expanduser() / "clara-napari" / "openvino"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            log.warning("%s: not a folder of this user; OpenVINO's model cache is off", folder)
            return None
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError as exc:
        log.warning("%s: OpenVINO's model cache is off (%s)", folder, exc.strerror or exc)
        return None
    return folder


_CORE = None
_CORE_LOCK = threading.Lock()


def core():
    """The process's ``openvino.Core`` (with the on-disk cache when :func:`cache_dir` allows one)."""
    global _CORE, _CACHE_FOLDER
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            new = ov.Core()
            folder = cache_dir()
            if folder is not None:
                new.set_property({"CACHE_DIR": str(folder)})
            _CORE, _CACHE_FOLDER = new, folder
        return _CORE


_CACHE_FOLDER: Path | None = None


@contextlib.contextmanager
def cache_lock():
    """OpenVINO writes and reads its cache blobs in place, so a process reading a blob that another
    is still writing can crash: compiling holds an exclusive lock on the cache folder (concurrent
    runs, Dask workers of one machine). Without ``fcntl`` (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if _CACHE_FOLDER is None or fcntl is None:
        yield
        return
    fd = os.open(_CACHE_FOLDER / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock


def compile_options(threads: int) -> dict:
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads)}


class OpenVinoEngine:
    runtime = "openvino"

    def __init__(self, model_file: Path, *, threads: int) -> None:
        model_file = Path(model_file)
        if model_file.suffix == ".xml" and not model_file.with_suffix(".bin").is_file():
            raise ConfigError(f"{model_file}: the OpenVINO model has no weights file {model_file.with_suffix('.bin').name}.")
        try:
            ov_core = core()
            # the network itself, for shape inference (see :meth:`_expected_outputs`)
            self._network = ov_core.read_model(str(model_file))
            with cache_lock():
                self.compiled = ov_core.compile_model(str(model_file), "CPU", compile_options(threads))
        except Exception as exc:  # OpenVINO raises RuntimeError with a long report
            from ..errors import first_line

            raise ConfigError(f"{model_file}: OpenVINO cannot load the model ({first_line(exc)}).") from exc
        self.model_file = model_file
        self.threads = threads
        self._ports = {}
        for kind, ports in (("in", self.compiled.inputs), ("out", self.compiled.outputs)):
            for port in ports:
                for name in port.get_names():
                    self._ports[(kind, name)] = port
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        self.description = f"openvino CPU {self.precision} ({threads} threads)"
        self._local = threading.local()
        # OpenVINO's calls from two threads at once deadlocked once in our runs (a C++ static
        # initialisation guard held by a thread waiting for the GIL, against a thread holding the
        # GIL at the same guard); with the latency hint there is one stream, so requests run one
        # at a time anyway: the lock costs no throughput, the caller's stitching still overlaps
        self._lock = threading.Lock()
        #: input shapes → the output shapes the network gives for them, or why it cannot take them
        self._shapes: dict[tuple, dict[str, tuple[int, ...]] | str] = {}

    def _expected_outputs(self, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:  # with self._lock held
        """The output shapes for these input shapes, from OpenVINO's shape inference on the network.

        OpenVINO's CPU plugin does not refuse every input shape the network cannot take: for some
        (deepbet with a window side of 40) it answered with the previous call's outputs, and its
        writes for such shapes corrupted memory (a later call in the same process crashed). Shape
        inference on the uncompiled network refuses them (~10 ms, once per shape), before the
        compiled model sees them.
        """
        key = tuple(sorted((name, tuple(array.shape)) for name, array in feed.items()))
        known = self._shapes.get(key)
        if known is None:
            try:
                self._network.reshape({name: list(shape) for name, shape in key})
                known = {name: tuple(port.get_partial_shape().to_shape())
                         for port in self._network.outputs for name in port.get_names()
                         if port.get_partial_shape().is_static}
            except RuntimeError as exc:   # OpenVINO's shape inference reports a conflict as RuntimeError
                from ..errors import first_line

                known = first_line(exc, 300)
            if len(self._shapes) >= MAX_KNOWN_SHAPES:   # a client sending ever new shapes gains no memory
                self._shapes.clear()
            self._shapes[key] = known
        if isinstance(known, str):
            raise ModelMismatchError(f"{self.model_file}: OpenVINO cannot run the model on input shapes "
                                     f"{[list(shape) for _, shape in key]} ({known}).")
        return known

    def has_input(self, name: str) -> bool:
        return ("in", name) in self._ports

    def has_output(self, name: str) -> bool:
        return ("out", name) in self._ports

    def _request(self):  # with self._lock held
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str], *, copy: bool = True) -> list[np.ndarray]:
        """``copy=False``: views of this thread's output buffers, valid until its next call (for a
        caller that copies them at once, like the Triton model program writing its response)."""
        arrays = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        feed = {self._ports[("in", name)]: array for name, array in arrays.items()}
        with self._lock:
            expected = self._expected_outputs(arrays)
            request = self._request()
            try:
                request.infer(feed, share_inputs=True, share_outputs=True)
            except Exception as exc:  # e.g. a window size the network cannot take
                from ..errors import first_line

                raise ModelMismatchError(f"{self.model_file}: OpenVINO cannot run the model on input shapes "
                                         f"{[list(a.shape) for a in inputs.values()]} ({first_line(exc, 300)}).") from exc
            # the request reuses its output buffers on the next call: hand out copies unless told
            results = [np.array(request.get_tensor(self._ports[("out", name)]).data, copy=copy) for name in outputs]
        for name, result in zip(outputs, results, strict=True):
            if name in expected and tuple(result.shape) != expected[name]:   # never a stale or partial buffer
                raise ModelMismatchError(f"{self.model_file}: OpenVINO returned output {name!r} of shape "
                                         f"{list(result.shape)}, the network gives {list(expected[name])} for input "
                                         f"shapes {[list(a.shape) for a in arrays.values()]}.")
        if any(r.size == 0 for r in results) and all(a.size for a in inputs.values()):
            # OpenVINO's CPU plugin answers some shapes the network cannot take with empty outputs
            raise ModelMismatchError(f"{self.model_file}: OpenVINO cannot run the model on input shapes "
                                     f"{[list(a.shape) for a in inputs.values()]} (the network returned "
                                     f"{[list(r.shape) for r in results]}).")
        return results
