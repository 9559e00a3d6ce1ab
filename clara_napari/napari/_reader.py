"""Reader: NIfTI, MetaImage, NRRD files and DICOM series folders → an Image layer in millimetres.

``get_reader`` only looks at the path (never raises, returns ``None`` for what it cannot read);
the returned reader reads with :func:`clara_napari.core.volume.read_volume` and gives the layer its
physical geometry (see :mod:`._geometry`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import ClaraNapariError
from ..core.volume import VOLUME_SUFFIXES, Volume, looks_like_dicom_folder, read_volume
from ._geometry import volume_to_layer

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` (one volume file or a DICOM series folder), else ``None``."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        target = Path(os.fspath(path))
        if target.name.lower().endswith(".dcm") and target.is_file():
            from ..core.dicom.seg import is_seg_file

            return read_seg_layers if is_seg_file(target) else None
        if target.is_dir():
            return read_layers if looks_like_dicom_folder(target) else None
        if target.name.lower().endswith(VOLUME_SUFFIXES) and target.is_file():
            return read_layers
    except (OSError, TypeError, ValueError, ClaraNapariError):  # a reader hook never raises: napari tries another plugin
        return None
    return None


def read_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """One Image layer (physical scale/translate/rotate, source geometry in metadata)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [image_layer_data(read_volume(Path(os.fspath(path))))]


def read_seg_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """A DICOM SEG file: one Labels layer on its source slices (see :mod:`._seg`)."""
    from ._seg import seg_layer_data

    if isinstance(path, (list, tuple)):
        path = path[0]
    return [seg_layer_data(Path(os.fspath(path)))]


def image_layer_data(volume: Volume, name: str | None = None) -> LayerData:
    data, kwargs = volume_to_layer(volume, name=name, kind="image")
    kwargs["colormap"] = "gray"
    return data, kwargs, "image"
