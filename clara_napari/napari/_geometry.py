"""Volumes ⇄ napari layers, with the physical geometry kept exact.

A :class:`~clara_napari.core.volume.Volume` maps voxel index ``i`` (x, y, z) to the physical point
``origin + direction @ (spacing * i)`` (SimpleITK, LPS millimetres). A napari layer maps its data
index ``j`` (z, y, x) to the world point ``rotate @ (scale * j) + translate``. So, in napari's
(z, y, x) order: ``scale`` is the spacing reversed, ``translate`` the origin reversed and ``rotate``
the direction matrix with its rows and columns reversed; world coordinates are LPS millimetres
in (z, y, x) order.

napari slices a layer in 2D along its *data* axes, so a rotation that swaps axes (a sagittal or
coronal acquisition, whose direction is a permutation) cannot be shown by ``rotate`` alone (napari
fails on it). The array is therefore shown with its axes *permuted* (never resampled) so that each
data axis runs along the world axis it is closest to; ``rotate`` holds the rest of the direction:
``diag(±1)`` for every axis-aligned volume (shown exactly in 2D and 3D), a rotation of less than
45° about the axes for an oblique one. For oblique volumes napari applies the full rotation in 3D;
in 2D it shows each slice of the volume's own voxel grid rotated in-plane only (it cannot cut an
oblique plane) and warns about it. Nothing is interpolated, so an Image layer and a Labels layer of
the same volume always agree voxel for voxel.

The source geometry (size, spacing, origin, direction as the exact floats SimpleITK gave) and the
axis permutation travel in ``layer.metadata["clara_napari"]``; :func:`layer_to_volume` undoes the
permutation and restores that geometry bit for bit. A layer without that metadata (napari's *New
labels layer*, a layer made in code) gets its geometry back from ``scale``/``translate``/``rotate``
(exact too, as those are stored as given).

Nothing here imports napari.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import VolumeError
from ..core.volume import Volume

#: The key of our entry in ``layer.metadata``.
KEY = "clara_napari"
#: World axis names (LPS millimetres, napari's (z, y, x) order).
AXIS_LABELS = ("z", "y", "x")
UNITS = ("mm", "mm", "mm")
_IDENTITY = (0, 1, 2)


# -- volume → layer --------------------------------------------------------------------------
def closest_axes(direction) -> tuple[int, int, int]:
    """``a[w]``: the source (x, y, z) axis shown along world axis ``w``.

    The permutation whose direction cosines, taken along the diagonal, have the largest product
    (the identity when it is as good as any other: nothing is permuted without need).
    """
    cosines = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    scores = {perm: math.prod(cosines[w, perm[w]] for w in range(3)) for perm in itertools.permutations(range(3))}
    best = max(scores.values())
    if scores[_IDENTITY] >= best - 1e-9:
        return _IDENTITY
    return max(scores, key=lambda perm: scores[perm])


def numpy_axes(axes: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``transpose`` of a (z, y, x) array that shows source (x, y, z) axis ``axes[w]`` along ``w``."""
    return tuple(2 - axes[2 - i] for i in range(3))


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0, 0, 0]
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def layer_transform(spacing, origin, direction, axes) -> dict[str, Any]:
    """``scale``, ``translate`` and ``rotate`` (napari (z, y, x) order) for a geometry shown with ``axes``."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)[:, list(axes)]
    spacing = [float(spacing[a]) for a in axes]
    return {
        "scale": np.array(spacing[::-1], dtype=float),
        "translate": np.array([float(v) for v in origin][::-1], dtype=float),
        "rotate": np.ascontiguousarray(matrix[::-1, ::-1]),
    }


def geometry_record(volume: Volume, axes: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    """What goes into ``layer.metadata["clara_napari"]`` (plain, exact Python floats)."""
    record = {
        "size": [int(v) for v in volume.size],
        "spacing": [float(v) for v in volume.spacing],
        "origin": [float(v) for v in volume.origin],
        "direction": [float(v) for v in volume.direction],
        "axes": [int(a) for a in axes],
        "source": str(volume.path) if volume.path is not None else None,
        "oblique": bool(volume.is_oblique),
    }
    record.update(extra)
    return record


def volume_to_layer(volume: Volume, *, name: str | None = None, kind: str = "image",
                    **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Layer data and keyword arguments (``scale``, ``translate``, ``rotate``, ``units``, ...)."""
    if volume.array.ndim != 3:
        raise VolumeError(f"{volume.name}: napari layers here are single-channel 3D volumes (shape {volume.array.shape}).")
    axes = closest_axes(volume.direction)
    data = volume.array if axes == _IDENTITY else volume.array.transpose(numpy_axes(axes))
    kwargs: dict[str, Any] = dict(layer_transform(volume.spacing, volume.origin, volume.direction, axes))
    kwargs.update(
        name=name or volume.name,
        units=UNITS,
        axis_labels=AXIS_LABELS,
        metadata={KEY: geometry_record(volume, axes, kind=kind, **extra)},
    )
    return data, kwargs


# -- layer → volume --------------------------------------------------------------------------
def _record(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    metadata = attributes.get("metadata") or {}
    record = metadata.get(KEY) if isinstance(metadata, Mapping) else None
    return record if isinstance(record, Mapping) else None


def _is_identity_affine(attributes: Mapping[str, Any]) -> bool:
    affine = attributes.get("affine")
    if affine is None:
        return True
    matrix = np.asarray(getattr(affine, "affine_matrix", affine), dtype=float)
    return matrix.shape == (4, 4) and np.array_equal(matrix, np.eye(4))


def record_matches(record: Mapping[str, Any], shape: tuple[int, ...], attributes: Mapping[str, Any]) -> bool:
    """True when the layer still shows the recorded geometry exactly (same grid, same transform)."""
    try:
        axes = tuple(int(a) for a in record["axes"])
        size = [int(v) for v in record["size"]]
        expected_shape = tuple(size[::-1][i] for i in numpy_axes(axes))
        if tuple(shape) != expected_shape:
            return False
        expected = layer_transform(record["spacing"], record["origin"], record["direction"], axes)
        for key in ("scale", "translate", "rotate"):
            if key in attributes and not np.array_equal(np.asarray(attributes[key], dtype=float), expected[key]):
                return False
        shear = attributes.get("shear")
        if shear is not None and np.any(np.asarray(shear, dtype=float) != 0):
            return False
        return _is_identity_affine(attributes)
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def geometry_from_transform(attributes: Mapping[str, Any]) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) in SimpleITK order from a layer's ``scale``/``translate``/``rotate``/``affine``."""
    scale = np.asarray(attributes.get("scale", (1.0, 1.0, 1.0)), dtype=float)
    translate = np.asarray(attributes.get("translate", (0.0, 0.0, 0.0)), dtype=float)
    rotate = np.asarray(attributes.get("rotate", np.eye(3)), dtype=float)
    shear = attributes.get("shear")
    if scale.shape != (3,) or translate.shape != (3,) or rotate.shape != (3, 3):
        raise VolumeError("the layer is not 3D (scale/translate/rotate of another size).")
    if shear is not None and np.any(np.asarray(shear, dtype=float) != 0):
        raise VolumeError("the layer is sheared; a sheared grid has no spacing/origin/direction geometry.")
    if np.any(scale <= 0):
        raise VolumeError(f"the layer's scale {scale.tolist()} has a non-positive value.")
    if not _is_identity_affine(attributes):
        matrix = np.asarray(getattr(attributes["affine"], "affine_matrix", attributes["affine"]), dtype=float)
        linear, offset = matrix[:3, :3], matrix[:3, 3]
        if not np.allclose(linear.T @ linear, np.eye(3), atol=1e-6):
            raise VolumeError("the layer's affine is not a rotation (it scales or shears).")
        rotate = linear @ rotate
        translate = linear @ translate + offset
    if not np.allclose(rotate.T @ rotate, np.eye(3), atol=1e-6):
        raise VolumeError("the layer's rotate matrix is not orthonormal.")
    direction = rotate[::-1, ::-1]
    return (tuple(float(v) for v in scale[::-1]), tuple(float(v) for v in translate[::-1]),
            tuple(float(v) for v in direction.ravel()))


def layer_to_volume(data, attributes: Mapping[str, Any], *, record: Mapping[str, Any] | None = None) -> Volume:
    """The volume a layer shows, on its source grid with its source geometry when known.

    ``record`` (a geometry record of another layer, e.g. the image a new Labels layer was made
    on) is used when the layer has none of its own.
    """
    array = np.asarray(data)
    if array.ndim != 3:
        raise VolumeError(f"the layer is {array.ndim}D (shape {array.shape}); a 3D volume is needed.")
    own = _record(attributes)
    chosen = own if own is not None and record_matches(own, array.shape, attributes) else None
    if chosen is None and record is not None and record_matches(record, array.shape, attributes):
        chosen = record
    if chosen is not None:
        axes = tuple(int(a) for a in chosen["axes"])
        if axes != _IDENTITY:
            array = array.transpose(_inverse(numpy_axes(axes)))
        source = chosen.get("source")
        return Volume(np.ascontiguousarray(array), spacing=tuple(chosen["spacing"]), origin=tuple(chosen["origin"]),
                      direction=tuple(chosen["direction"]), path=Path(source) if source else None)
    spacing, origin, direction = geometry_from_transform(attributes)
    return Volume(np.ascontiguousarray(array), spacing=spacing, origin=origin, direction=direction)


def find_source_record(shape: tuple[int, ...], attributes: Mapping[str, Any],
                       candidates) -> dict[str, Any] | None:
    """The geometry record, among ``candidates`` (layers' metadata dicts), that this layer's grid matches."""
    for metadata in candidates:
        record = metadata.get(KEY) if isinstance(metadata, Mapping) else None
        if isinstance(record, Mapping) and record_matches(record, shape, attributes):
            return dict(record)
    return None


def smallest_label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer type holding every label (uint8 for the usual few labels)."""
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise VolumeError(f"labels must be whole numbers, the layer holds {array.dtype}.")
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)
