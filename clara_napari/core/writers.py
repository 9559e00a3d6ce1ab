"""Writers: the config's ``writers``, where each output goes and how it is made from the results.

Each writer turns the post-transformed sample into its output with :meth:`Writer.output` (a label
or score :class:`~clara_napari.core.volume.Volume` back on the input's grid, bit for bit; a
:class:`ClassificationResult` for :class:`ClassificationWriter`) and writes it with :meth:`Writer.write`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from .errors import ConfigError
from .geometry import Grid, onto_grid
from .registry import Component, Registry
from .transforms.spatial import Dtype

if TYPE_CHECKING:
    from .apps import App
    from .label_table import LabelTable
    from .transforms import FieldMeta, Sample
    from .volume import Volume

WRITERS = Registry("writer")

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

    def output(self, sample: Sample, source: Volume, labels: LabelTable) -> Volume | ClassificationResult:
        """Its field of ``sample`` as a volume on the ``source`` grid with the source's geometry, bit for bit
        (a single-channel field, resampled where the grids differ: nearest for labels)."""
        array = sample.array(self.field, f"writer for {self.field!r}")
        meta: FieldMeta = sample.meta[self.field]
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise ConfigError(f"writers: field {self.field!r} has {array.shape[0]} channels; reduce it to one "
                                  "(e.g. ArgmaxAcrossChannels) before writing.")
            array = array[0]
        target = Grid.of(source)
        # pixel type and interpolation: the writer's ``dtype`` and ``is_label`` args (VolumeWriter, DicomSegWriter)
        is_label, dtype = getattr(self, "is_label", True), getattr(self, "dtype", "uint8")
        array = onto_grid(array, meta.grid, target, is_label=is_label or meta.is_label)
        if tuple(array.shape) != target.size:
            raise ConfigError(f"writers: field {self.field!r} could not be brought back to the input grid.")
        return source.with_array(np.ascontiguousarray(array.transpose(2, 1, 0).astype(dtype)),
                                 path=Path(source.path) if source.path else None)

    def target(self, folder: Path, stem: str, index: int) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, value, path: Path, *, forbid=(), overwrite: bool = True, app: App | None = None,
              model: str = "") -> Path:  # pragma: no cover - abstract
        """Write ``value`` (what :meth:`output` made) to ``path``; ``app`` and ``model`` are there for the
        writers that record them (DICOM SEG); every writer accepts them, so callers need not ask which."""
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

    def write(self, value, path: Path, *, forbid=(), overwrite: bool = True, app: App | None = None,
              model: str = "") -> Path:
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
        ranked = sorted(zip(self.names, self.probabilities, strict=True), key=lambda item: -item[1])
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

    def output(self, sample: Sample, source: Volume, labels: LabelTable) -> ClassificationResult:
        """The class scores of its field; class ``i`` is named by ``label_names[i]``, else by the app's
        label of value ``i`` (0 = the first class), else ``class_i``."""
        scores = np.asarray(sample.array(self.field, f"writer for {self.field!r}"), dtype=np.float64).ravel()
        return self.result(scores, labels)

    def result(self, scores, labels: LabelTable) -> ClassificationResult:
        values = [float(v) for v in scores]
        names = [self.label_names[i] if i < len(self.label_names) else labels.name_of(i, f"class_{i}")
                 for i in range(len(values))]
        return ClassificationResult(tuple(names), tuple(values), self.threshold, self.top_k)

    def write(self, value: ClassificationResult, path: Path, *, forbid=(), overwrite: bool = True,
              app: App | None = None, model: str = "") -> Path:
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
