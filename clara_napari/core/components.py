"""Inferer, model-loader and writer components of a Clara config (the non-transform parts)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from .errors import ConfigError
from .registry import Component, Registry
from .transforms.spatial import Dtype

#: Largest scanning-window overlap an app may ask for (0.95: 20x the windows per axis of no overlap).
MAX_OVERLAP = 0.95

INFERERS = Registry("inferer")
MODEL_LOADERS = Registry("model loader")
WRITERS = Registry("writer")


class InfererSpec(Component):
    """What every inferer shares: which model, where (Clara's TRTIS args) and how to send requests."""

    scanning: ClassVar[bool] = False

    model_name: str = ""
    model_version: str = ""
    ip: str | None = None
    server_ip: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["HTTP", "GRPC", "http", "grpc"] = "HTTP"
    output_type: Literal["RAW", "CLASSIFICATION"] = "RAW"
    batch_size: int | None = Field(None, ge=1)
    requests_in_flight: int = Field(2, ge=1, le=64)
    timeout_s: float = Field(120.0, gt=0)
    input_name: str = ""
    output_name: str = ""
    pad_value: float = 0.0
    #: test-time augmentation: "none", "mirror" (every combination of the x, y, z axes: 8
    #: predictions per window) or a list of axes to mirror [0 = x, 1 = y, 2 = z]
    tta: Literal["none", "mirror"] | list[int] = "none"

    @field_validator("tta")
    @classmethod
    def _axes(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or any(a not in (0, 1, 2) for a in value)):
            raise ValueError("needs \"none\", \"mirror\" or a list of distinct axes from 0 (x), 1 (y), 2 (z)")
        return value

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """The spatial axes test-time augmentation mirrors (empty: none)."""
        if self.tta == "none":
            return ()
        return (0, 1, 2) if self.tta == "mirror" else tuple(self.tta)

    @property
    def host(self) -> str | None:
        return self.server_ip or self.ip

    @property
    def address(self) -> str | None:
        """``host:port`` from the config args, if they name a server."""
        if not self.host:
            return None
        return f"{self.host}:{self.port or (8001 if self.protocol.upper() == 'GRPC' else 8000)}"


@INFERERS.register("TRTISScanWindowInferer", "TritonScanWindowInferer", "TFScanWindowInferer",
                   "ScanWindowInferer")
class ScanWindowInferer(InfererSpec):
    """Scanning windows of ``roi_size`` [x, y, z] (default: the model's fixed dims)."""

    scanning: ClassVar[bool] = True

    roi_size: list[int] | None = None
    overlap: float = Field(0.25, ge=0.0, le=MAX_OVERLAP)
    blending: Literal["constant", "gaussian"] = "constant"

    @field_validator("roi_size")
    @classmethod
    def _positive(cls, value):
        if value is not None and (len(value) != 3 or any(v <= 0 for v in value)):
            raise ValueError("needs three positive whole numbers [x, y, z]")
        return value


@INFERERS.register("TRTISSimpleInferer", "TritonSimpleInferer", "TFSimpleInferer", "SimpleInferer")
class SimpleInferer(InfererSpec):
    """One request with the whole volume, padded to a multiple of ``pad_to_multiple`` voxels."""

    pad_to_multiple: int = Field(1, ge=1)


@INFERERS.register("SlidingWindowInferer")
class SlidingWindowInferer(ScanWindowInferer):
    """Clara 4's (MONAI's) scanning-window inferer: ``roi_size``, ``sw_batch_size``, ``overlap``,
    ``mode`` (constant/gaussian) and ``cval`` on the same engine; the model is served by Triton or
    the local runtime (never built from the config)."""

    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(1, ge=1)
    mode: Literal["constant", "gaussian"] = "constant"
    sigma_scale: float | list[float] = 0.125
    padding_mode: Literal["constant"] = "constant"
    cval: float = 0.0
    device: str | None = None
    sw_device: str | None = None
    progress: bool = False
    cache_roi_weight_map: bool = False

    def model_post_init(self, context) -> None:
        # the engine reads the Clara 3 names
        object.__setattr__(self, "blending", self.mode)
        object.__setattr__(self, "pad_value", self.cval)
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", self.sw_batch_size)


@MODEL_LOADERS.register("TRTISModelLoader", "TritonModelLoader")
class TritonModelLoader(Component):
    """Names the model's ``config.pbtxt``; checked against the server's config before inferring."""

    model_spec_file_name: str


@MODEL_LOADERS.register("FrozenGraphModelLoader", "CheckpointLoader", "TorchScriptModelLoader")
class MmarModelLoader(Component):
    """A Clara Train model loader naming a model file of the MMAR (a frozen TensorFlow graph, a
    checkpoint, TorchScript). The file is never read: the model it stands for is served by Triton
    under the inferer's ``model_name`` or ``--model NAME`` (the loader is mapped, see
    :meth:`InferenceConfig.model_note`)."""

    model_file_path: str = ""
    checkpoint_dir: str = ""
    checkpoint_file_prefix: str = "model.ckpt"
    input_node_names: list[str] | dict[str, str] | None = None
    output_node_names: list[str] | dict[str, str] | None = None
    infer_in_training_mode: bool = False

    def describe(self) -> str:
        what = self.model_file_path or self.checkpoint_dir or "model"
        return f"{self.config_name} ({Path(what).name or what})"


EVAL_OUTPUT = "{MMAR_EVAL_OUTPUT_PATH}"


def resolve_write_path(write_path: str, folder: Path, where: str) -> Path:
    """The folder a writer writes into: ``write_path`` resolved inside the run's output ``folder``.

    ``{MMAR_EVAL_OUTPUT_PATH}`` is the output folder; a relative path is taken inside it; a path
    that resolves outside it (``..``, absolute elsewhere, a link out) is refused.
    """
    folder = Path(folder)
    if EVAL_OUTPUT in write_path:
        target = Path(write_path.replace(EVAL_OUTPUT, str(folder)))
    elif not write_path:
        target = folder
    else:
        target = Path(write_path) if Path(write_path).is_absolute() else folder / write_path
    root, resolved = folder.resolve(), target.resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigError(f"{write_path!r} resolves to {resolved}, outside the output folder {root}; "
                          "a writer may only write inside the output folder (--output).", path=where)
    return target


class Writer(Component):
    """A writer: where one field of the results goes, and how."""

    field: str = "model"
    #: the arg naming its folder (for errors)
    path_arg: ClassVar[str] = "write_path"

    def folder(self, folder: Path) -> Path:
        """Where it writes: its ``write_path`` resolved inside the output ``folder`` (else refused)."""
        where = f"{self._json_path or 'writers'}.args.{self.path_arg}"
        return resolve_write_path(getattr(self, "write_path", "") or "", folder, where)

    def target(self, folder: Path, stem: str, index: int) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, value, path: Path, *, forbid=(), overwrite: bool = True) -> Path:  # pragma: no cover
        raise NotImplementedError


@WRITERS.register("WriteNifti", "WriteMetaImage", "WriteMhd", "WriteVolume")
class VolumeWriter(Writer):
    """Writes ``field`` with pixel type ``dtype`` on the input's grid.

    The operator contract names the file (``<output>/<input name>.mhd``); ``format`` may ask
    for another volume format, ``write_path`` for another folder.
    """

    dtype: Dtype = "uint8"
    write_path: str = ""
    format: Literal["mhd", "mha", "nii", "nii.gz", "nrrd"] = "mhd"
    compress: bool = False
    is_label: bool = True

    def target(self, folder: Path, stem: str, index: int) -> Path:
        """``<stem>.mhd`` for the first writer (the downstream DICOM writer relies on it)."""
        name = f"{stem}.{self.format}" if index == 0 else f"{stem}.{self.field}.{self.format}"
        return self.folder(folder) / name

    def write(self, value, path: Path, *, forbid=(), overwrite: bool = True) -> Path:
        from .volume import write_volume

        return write_volume(value, path, compress=self.compress, overwrite=overwrite, forbid=forbid)


@WRITERS.register("SaveImaged")
class SaveImaged(VolumeWriter):
    """Clara 4's writer (a post-transform there): ``keys`` written like the other writers, into
    ``output_dir`` resolved inside the run's output folder, on the input's grid. ``output_ext``
    picks the format; the resampling and naming args are accepted (the grid is always the input's,
    the name the operator's)."""

    path_arg: ClassVar[str] = "output_dir"

    keys: list[str] | str = "pred"
    output_dir: str = ""
    output_ext: Literal[".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ""] = ""
    output_postfix: str = "seg"
    meta_keys: Any = None
    meta_key_postfix: str = "meta_dict"
    resample: bool = True
    squeeze_end_dims: bool = True
    separate_folder: bool = True
    print_log: bool = True
    output_dtype: Any = None
    mode: str = "nearest"
    padding_mode: str = "border"
    data_root_dir: str = ""
    allow_missing_keys: bool = False

    @field_validator("keys")
    @classmethod
    def _one_key(cls, value):
        keys = [value] if isinstance(value, str) else value
        if len(keys) != 1:
            raise ValueError("write one key per SaveImaged")
        return value

    def model_post_init(self, context) -> None:
        key = self.keys if isinstance(self.keys, str) else self.keys[0]
        object.__setattr__(self, "field", key)
        object.__setattr__(self, "write_path", self.output_dir)
        if self.output_ext:
            object.__setattr__(self, "format", self.output_ext.lstrip("."))


@dataclass(frozen=True)
class ClassificationResult:
    """Class probabilities of one volume, and which classes count as positive."""

    names: tuple[str, ...]
    probabilities: tuple[float, ...]
    threshold: float
    top_k: int = 0

    def ranked(self) -> list[tuple[str, float]]:
        ranked = sorted(zip(self.names, self.probabilities), key=lambda item: -item[1])
        return ranked[: self.top_k] if self.top_k else ranked

    @property
    def positives(self) -> list[str]:
        return [name for name, p in self.ranked() if p >= self.threshold]

    def csv_text(self, image: str) -> str:
        """``image,threshold,positives,top_classes`` with ``label:probability`` entries."""
        import csv
        import io

        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        out.writerow(["image", "threshold", "positives", "top_classes"])
        out.writerow([image, f"{self.threshold:g}", " ".join(self.positives),
                      " ".join(f"{name}:{p:.4f}" for name, p in self.ranked())])
        return buffer.getvalue()


@WRITERS.register("ClassificationResultWriter", "WriteClassificationResult", "ClassificationWriter")
class ClassificationWriter(Writer):
    """The original's classification result writer: ``<output>/output-<name>.csv``.

    ``label_names[i]`` names class ``i`` (default: the app's labels, else ``class_i``); classes
    with probability >= ``threshold`` are positive; ``top_k`` limits the listed classes (0: all).
    """

    label_names: list[str] = []
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    write_path: str = ""

    def target(self, folder: Path, stem: str, index: int) -> Path:
        return self.folder(folder) / f"output-{stem}.csv"

    def result(self, scores, fallback_names: dict[int, str]) -> ClassificationResult:
        values = [float(v) for v in scores]
        names = [self.label_names[i] if i < len(self.label_names) else fallback_names.get(i, f"class_{i}")
                 for i in range(len(values))]
        return ClassificationResult(tuple(names), tuple(values), self.threshold, self.top_k)

    def write(self, value: ClassificationResult, path: Path, *, forbid=(), overwrite: bool = True) -> Path:
        from .atomic import atomic_paths
        from .errors import VolumeError

        path = Path(path)
        if path.exists() and not overwrite:
            raise VolumeError(f"{path}: exists already (use --overwrite to replace it).")
        source = next(iter(forbid), None)
        try:
            with atomic_paths(path) as (temp,):
                temp.write_text(value.csv_text(Path(source).name if source else path.stem[len("output-"):]), encoding="utf-8")
        except OSError as exc:
            raise VolumeError(f"{path}: cannot write ({exc.strerror or exc}).") from None
        return path


from .dicom import writer as _dicom_writer  # noqa: E402,F401  (registers DicomSegWriter)
