"""Triton model repositories: ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/<version>/<file>``.

``config.pbtxt`` is protobuf text of Triton's ``ModelConfig``; it is parsed with the message
class tritonclient ships, so whatever a stock Triton accepts is read the same way here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

#: Triton v2 datatype names → numpy dtypes.
NUMPY_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64,
}
_DEFAULT_FILES = {"onnxruntime_onnx": "model.onnx", "onnxruntime": "model.onnx", "openvino": "model.xml",
                  "pytorch_libtorch": "model.pt", "pytorch": "model.pt", "python": "model.py"}
#: a name that becomes one path component (model name, model file name): no ``/``, no ``..``, no
#: control characters, nothing but letters, digits and ``_ . -``; not starting with ``.`` or ``-``
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def is_plain_name(name: str) -> bool:
    """True for a name that is safe as one path component (see ``_PLAIN_NAME``)."""
    return bool(_PLAIN_NAME.fullmatch(name)) and ".." not in name


def check_plain_name(name: str, what: str, path: Path | None) -> str:
    if not is_plain_name(name):
        raise ConfigError(f"the {what} {name!r} is not a plain name (letters, digits, '_', '.', '-'; "
                          "no path separators, '..' or control characters).", file=str(path or ""))
    return name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str            # v2 name: FP32, UINT8, ...
    dims: tuple[int, ...]    # without the batch dimension; -1 = any size

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPES[self.datatype])

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {list(self.dims)}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    default_model_filename: str = ""
    path: Path | None = None
    #: ``parameters { key: "clara_napari_runtime" ... }``: the runtime this model runs best on here
    #: (used when the user names none; a stock Triton ignores the parameter)
    preferred_runtime: str = ""

    @property
    def runtime(self) -> str:
        return self.platform or self.backend

    def model_file(self, version: str | int | None = None) -> Path:
        """The model file of ``version`` (default: the highest numbered version folder)."""
        if self.path is None:
            raise ConfigError(f"model {self.name!r} has no repository folder.")
        folder = self.path.parent
        versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ConfigError(f"{folder}: the model has no version folder (e.g. {folder / '1'}).")
        chosen = int(version) if version not in (None, "", -1) else versions[-1]
        if chosen not in versions:
            raise ConfigError(f"{folder}: the model has no version {chosen} (versions: {versions}).")
        name = self.default_model_filename or _DEFAULT_FILES.get(self.runtime, "model.onnx")
        check_plain_name(name, "default_model_filename", self.path)
        file = folder / str(chosen) / name
        if not file.is_file():
            raise ConfigError(f"{file}: the model file is missing.")
        if not file.resolve().is_relative_to(folder.resolve()):
            raise ConfigError(f"{file}: the model file links outside its model folder {folder}.")
        return file


def datatype_name(enum_value: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    name = mc.DataType.Name(enum_value)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def parse_model_config(text: str, path: Path | None = None) -> ModelSpec:
    """Parse protobuf text of a Triton ``ModelConfig``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        # position and kind only: protobuf's message quotes the offending token, and a file named
        # by mistake (a key, a password file) must not have its contents echoed
        kind = "an unknown field" if "has no field named" in str(exc) else "a syntax error"
        raise ConfigError(f"not a valid Triton model config ({kind} at line {exc.GetLine()}, column "
                          f"{exc.GetColumn()}).", file=str(path or "")) from None
    return spec_from_proto(config, path)


def spec_from_proto(config, path: Path | None = None) -> ModelSpec:
    def tensors(items):
        return tuple(TensorSpec(t.name, datatype_name(t.data_type), tuple(int(d) for d in t.dims)) for t in items)

    name = config.name or (path.parent.name if path is not None else "")
    if path is not None:   # read from a file: these names become paths (a server's answer never does)
        check_plain_name(name, "model name", path)
        if config.default_model_filename:
            check_plain_name(config.default_model_filename, "default_model_filename", path)
    preferred = config.parameters["clara_napari_runtime"].string_value if "clara_napari_runtime" in config.parameters else ""
    return ModelSpec(name=name, platform=config.platform, backend=config.backend,
                     max_batch_size=int(config.max_batch_size), inputs=tensors(config.input),
                     outputs=tensors(config.output), default_model_filename=config.default_model_filename,
                     path=path, preferred_runtime=preferred.strip().lower())


def read_model_config(path: str | Path) -> ModelSpec:
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the model config ({exc.strerror or exc}).", file=str(path)) from None
    return parse_model_config(text, path)


def list_models(repository: str | Path) -> list[ModelSpec]:
    repository = Path(repository)
    if not repository.is_dir():
        raise ConfigError(f"{repository}: the model repository does not exist.")
    return [read_model_config(p / "config.pbtxt") for p in sorted(repository.iterdir())
            if (p / "config.pbtxt").is_file()]


def find_model(repository: str | Path, name: str) -> ModelSpec:
    for spec in list_models(repository):
        if spec.name == name:
            return spec
    names = [s.name for s in list_models(repository)]
    raise ConfigError(f"{repository}: no model {name!r} in the repository (models: {', '.join(names) or 'none'}).")
