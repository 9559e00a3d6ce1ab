"""Writers: a layer to MetaImage on its source grid, and an image + labels pair to the publish bundle.

The geometry comes from the layer's ``metadata["clara_napari"]`` record (the exact source size,
spacing, origin and direction; the axis permutation is undone), else from the record of a layer in
the current viewer whose grid it shares exactly (napari's *New labels layer* copies the transform
but not the metadata), else from the layer's own ``scale``/``translate``/``rotate``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.components import VolumeWriter
from ..core.errors import ConfigError, VolumeError
from ..core.label_table import LabelTable
from ..core.pipeline import Segmentation
from ..core.volume import Volume, write_volume
from ._geometry import KEY, find_source_record, layer_to_volume, smallest_label_dtype

METAIMAGE = (".mhd", ".mha")


def _viewer_metadata() -> list[Mapping[str, Any]]:
    """Metadata of the layers of the current napari viewer (nothing when napari is not in use)."""
    napari = sys.modules.get("napari")
    if napari is None:
        return []
    try:
        viewer = napari.current_viewer()
        return [layer.metadata for layer in viewer.layers] if viewer is not None else []
    except (AttributeError, RuntimeError):  # napari without current_viewer, or its Qt side gone: the transform decides
        return []


def layer_volume(data: Any, attributes: Mapping[str, Any], *, records: Sequence[Mapping[str, Any]] = ()) -> Volume:
    """The layer as a :class:`Volume` on its source grid (see the module docstring)."""
    array = np.asarray(data)
    record = find_source_record(array.shape, attributes, [*records, *_viewer_metadata()])
    return layer_to_volume(array, attributes, record=record)


def _metaimage_path(path: str | os.PathLike) -> Path:
    target = Path(os.fspath(path))
    if not target.name.lower().endswith(METAIMAGE):
        target = target.with_name(target.name + ".mhd")
    return target


def _written(header: Path) -> list[str]:
    files = [str(header)]
    if header.suffix.lower() == ".mhd":
        for ext in (".raw", ".zraw"):
            data = header.with_suffix(ext)
            if data.is_file():
                files.insert(0, str(data))
                break
    return files


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """A Labels layer → ``.mhd`` + ``.raw`` (or ``.mha``) with the source volume's exact geometry."""
    volume = layer_volume(data, attributes)
    source = volume.path
    labels = volume.with_array(volume.array.astype(smallest_label_dtype(volume.array), copy=False), path=None)
    return _written(write_volume(labels, _metaimage_path(path), forbid=[source] if source else []))


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """An Image layer → ``.mhd`` + ``.raw`` (or ``.mha``) with its source geometry (never over its source file)."""
    volume = layer_volume(data, attributes)
    return _written(write_volume(volume, _metaimage_path(path)))


# -- the publish bundle ----------------------------------------------------------------------
def _layer_labels(record: Mapping[str, Any], array: np.ndarray) -> LabelTable:
    """The layer's labels: from the widget's record, else numbered names in the default palette."""
    return LabelTable.from_record(record) or LabelTable.numbered(np.unique(array))


def _layer_app(record: Mapping[str, Any]):
    """The app that made the labels (its render settings and labels), or None."""
    app_ref = record.get("app")
    if app_ref:
        from ..core.apps import resolve_app

        try:
            return resolve_app(app_ref)
        except ConfigError:
            return None
    return None


def write_bundle(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """An Image layer and a Labels layer → the Clara Render Server publish bundle in the folder ``path``."""
    from ..core.publish import write_publish_bundle

    images = [(d, a) for d, a, kind in layer_data if kind == "image"]
    labels = [(d, a) for d, a, kind in layer_data if kind == "labels"]
    if len(images) != 1 or len(labels) != 1:
        raise VolumeError("the publish bundle takes exactly one Image layer and one Labels layer.")
    (image_data, image_attrs), (label_data, label_attrs) = images[0], labels[0]
    image = layer_volume(image_data, image_attrs)
    mask = layer_volume(label_data, label_attrs, records=[image_attrs.get("metadata") or {}])
    if not mask.same_grid(image):
        raise VolumeError(f"the Labels layer {label_attrs.get('name', '')!r} is not on the grid of the Image layer "
                          f"{image_attrs.get('name', '')!r} (size {mask.size} vs {image.size}); the bundle needs both on one grid.")
    mask = mask.with_array(mask.array.astype(smallest_label_dtype(mask.array), copy=False), path=None)
    record = dict((label_attrs.get("metadata") or {}).get(KEY) or {})
    name = image.name if image.path is not None else str(image_attrs.get("name") or "volume")
    app = _layer_app(record)
    labels = app.config.label_table() if app is not None else _layer_labels(record, mask.array)
    model = str(record.get("model") or ("" if app is not None else "napari"))
    segmentation = Segmentation(source=image, outputs=[(VolumeWriter(), mask)], model=model)
    folder = Path(os.fspath(path))
    folder.mkdir(parents=True, exist_ok=True)
    written = write_publish_bundle(folder, segmentation, app, overwrite=True, name=name, labels=labels)
    return [str(p) for p in written]
