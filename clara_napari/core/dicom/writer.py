"""The app-level DICOM SEG writer: ``--dicom-seg``, ``segment(..., dicom_seg=)`` and ``DicomSegWriter``.

``DicomSegWriter`` can stand in a ``config_inference.json``'s ``writers``::

    {"name": "DicomSegWriter", "args": {"field": "model"}}

It writes ``<output>/<name>.seg.dcm`` for a DICOM series input (any other input is refused).
For a fractional SEG, point it at a probability field of one label:
``{"field": "prob", "fractional": true, "dtype": "float32", "is_label": false}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import DicomError
from ..label_table import LabelTable
from ..transforms.spatial import Dtype
from ..volume import Volume
from ..writers import WRITERS, Writer
from .codes import segment_infos
from .seg import SEG_SUFFIX, write_seg
from .series import is_dicom_series

if TYPE_CHECKING:
    from ..apps import App


def require_dicom_source(source: Path | str | None, option: str = "--dicom-seg") -> None:
    """Refuse a SEG for an input that is not a DICOM series folder (one sentence)."""
    if not is_dicom_series(source):
        raise DicomError(f"{source}: {option} needs a DICOM series folder as input (a SEG references its source "
                         "instances); this input is not one.")


def write_app_seg(labels: Volume, app: App | None, path: Path | str, *, model: str = "", fractional: bool = False,
                  overwrite: bool = True) -> Path:
    """Write ``labels`` (read from a DICOM series) as ``path``, one segment per label of ``app``."""
    require_dicom_source(labels.path)
    config = app.config if app is not None else None
    table = config.label_table() if config is not None else LabelTable()
    values = () if fractional else np.unique(labels.array)
    if fractional and not table:
        table = LabelTable.from_pairs({1: ("probability", "#ffffff")})
    infos = segment_infos(table, app.folder if app is not None else None, values)
    name = app.name if app is not None else "clara-napari"
    model = model or (config.model_name if config is not None else "")
    version = f"model {model}" + (f" v{config.inferer.model_version}" if config is not None and config.inferer.model_version else "")
    return write_seg(labels, path, infos, algorithm=name, version=version, model=model, fractional=fractional,
                     overwrite=overwrite)


@WRITERS.register("DicomSegWriter", "WriteDicomSeg")
class DicomSegWriter(Writer):
    """Writes ``field`` as ``<output>/<name>.seg.dcm`` referencing the source DICOM series."""

    #: the operator hands ``write`` the app (labels, names, colours, codes) and model name
    wants_app: ClassVar[bool] = True

    dtype: Dtype = "uint8"
    is_label: bool = True
    fractional: bool = False
    write_path: str = ""

    def target(self, folder: Path, stem: str, index: int) -> Path:
        return Path(self.write_path or folder) / f"{stem}{SEG_SUFFIX}"

    def write(self, value, path: Path, *, forbid=(), overwrite: bool = True, app: App | None = None,
              model: str = "") -> Path:
        return write_app_seg(value, app, path, model=model, fractional=self.fractional, overwrite=overwrite)
