"""Post-transforms that turn model outputs into clean label maps."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from ..registry import FieldsMixin, as_field_list
from .base import TRANSFORMS, Sample, Transform
from .spatial import Dtype


def _label_fields(sample: Sample, fields: list[str], who: str):
    for key in fields:
        yield key, sample.array(key, who)


def _per_label(array: np.ndarray, operation) -> np.ndarray:
    """Apply ``operation(mask) -> mask`` to each non-zero label of ``[C, X, Y, Z]`` or ``[X, Y, Z]``."""
    out = np.zeros_like(array)
    for value in np.unique(array):
        if value == 0:
            continue
        out[operation(array == value)] = value
    return out


@TRANSFORMS.register("ArgmaxAcrossChannels")
class ArgmaxAcrossChannels(FieldsMixin, Transform):
    """``[C, X, Y, Z]`` scores → ``[1, X, Y, Z]`` label map (the channel with the highest score)."""

    fields: list[str] = ["model"]
    dtype: Dtype = "uint8"

    def __call__(self, sample: Sample) -> None:
        for key, array in _label_fields(sample, self.fields, self.config_name):
            labels = np.argmax(array, axis=0)[None] if array.ndim == 4 else (array > 0.5)
            sample.put(key, labels.astype(self.dtype), sample.meta[key].copy(is_label=True))


@TRANSFORMS.register("ThresholdChannel")
class ThresholdChannel(FieldsMixin, Transform):
    """Label ``value`` where channel ``channel`` is above ``threshold`` (probabilities → mask)."""

    fields: list[str] = ["model"]
    channel: int = Field(1, ge=0)
    threshold: float = 0.5
    value: int = Field(1, ge=1, le=255)

    def __call__(self, sample: Sample) -> None:
        for key, array in _label_fields(sample, self.fields, self.config_name):
            if array.ndim != 4 or self.channel >= array.shape[0]:
                raise ConfigError(f"{self.config_name}: field {key!r} has no channel {self.channel}.")
            labels = (array[self.channel] > self.threshold).astype(np.uint8)[None] * np.uint8(self.value)
            sample.put(key, labels, sample.meta[key].copy(is_label=True))


@TRANSFORMS.register("SplitBasedOnLabel")
class SplitBasedOnLabel(Transform):
    """One binary field per label value: ``label_names[i]`` gets the voxels equal to ``i``."""

    field: str = "model"
    label_names: list[str]

    def __call__(self, sample: Sample) -> None:
        array = sample.array(self.field, self.config_name)
        meta = sample.meta[self.field]
        for value, name in enumerate(self.label_names):
            sample.put(name, (array == value).astype(np.uint8), meta.copy(is_label=True))


@TRANSFORMS.register("SplitAcrossChannels")
class SplitAcrossChannels(Transform):
    """One field per channel of ``field``: ``channel_names[i]`` gets ``[1, X, Y, Z]`` channel ``i``."""

    field: str = "model"
    channel_names: list[str]

    def __call__(self, sample: Sample) -> None:
        array = sample.array(self.field, self.config_name)
        if array.ndim != 4 or array.shape[0] < len(self.channel_names):
            raise ConfigError(f"{self.config_name}: field {self.field!r} has {array.shape[0] if array.ndim == 4 else 0} "
                             f"channels, {len(self.channel_names)} names given.")
        for index, name in enumerate(self.channel_names):
            sample.put(name, array[index:index + 1], sample.meta[self.field].copy())


class _Morphology(FieldsMixin, Transform):
    fields: list[str] = ["model"]
    field: str | None = None
    connectivity: Literal[1, 2, 3] = 1

    def keys(self) -> list[str]:
        return as_field_list(self.field) if self.field else self.fields

    def structure(self, ndim: int) -> np.ndarray:
        from scipy import ndimage

        inner = ndimage.generate_binary_structure(3, self.connectivity)
        if ndim == 3:
            return inner
        outer = np.zeros((3, 3, 3, 3), dtype=bool)  # channels are never connected to each other
        outer[1] = inner
        return outer

    def __call__(self, sample: Sample) -> None:
        for key, array in _label_fields(sample, self.keys(), self.config_name):
            sample[key] = self.apply(array)

    def apply(self, array: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@TRANSFORMS.register("KeepLargestCC")
class KeepLargestCC(_Morphology):
    """Keep the ``num_components`` largest connected components of each label (6-connected by default).

    ``min_size_ratio`` also drops kept components smaller than that fraction of the largest one
    (e.g. 0.1 keeps both lungs but not a bubble of stomach gas).
    """

    num_components: int = Field(1, ge=1)
    min_size_ratio: float = Field(0.0, ge=0.0, le=1.0)

    def apply(self, array):
        from scipy import ndimage

        structure = self.structure(array.ndim)

        def largest(mask):
            labelled, count = ndimage.label(mask, structure=structure)
            if count <= 1:
                return mask
            sizes = np.bincount(labelled.ravel())[1:]
            keep = np.argsort(sizes)[::-1][: self.num_components]
            keep = keep[sizes[keep] >= self.min_size_ratio * sizes.max()] + 1
            return np.isin(labelled, keep)

        return _per_label(array, largest)


@TRANSFORMS.register("FillHoles")
class FillHoles(_Morphology):
    """Fill the enclosed holes of each label in 3D (holes are background voxels; other labels stay)."""

    def apply(self, array):
        from scipy import ndimage

        structure = self.structure(array.ndim)
        background = array == 0
        return _per_label(array, lambda mask: ndimage.binary_fill_holes(mask, structure=structure) & (mask | background))


@TRANSFORMS.register("RemoveBorderConnected")
class RemoveBorderConnected(_Morphology):
    """Remove the components of each label that touch the in-plane border of the volume.

    Air around the patient touches the border; air in the lungs does not. The z ends are left out
    by default because the lungs may be cut by the first or last slice.
    """

    include_z: bool = False

    def apply(self, array):
        from scipy import ndimage

        structure = self.structure(array.ndim)

        def inner(mask):
            labelled, _ = ndimage.label(mask, structure=structure)
            sp = labelled if labelled.ndim == 3 else labelled[0]
            faces = [sp[0], sp[-1], sp[:, 0], sp[:, -1]]
            if self.include_z:
                faces += [sp[:, :, 0], sp[:, :, -1]]
            touching = np.unique(np.concatenate([f.ravel() for f in faces]))
            return mask & ~np.isin(labelled, touching[touching > 0])

        return _per_label(array, inner)
