"""The data a Clara pipeline passes along, and the transform base class.

As in Clara Train 3, data travel as a dictionary: the input image under ``"image"``, the model
output under ``"model"``. Arrays are in Clara's (x, y, z) order, channels first after
``ConvertToChannelsFirst``. Each key's geometry travels in ``sample.meta[key]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..geometry import Grid
from ..registry import Component, Registry

#: Names from Clara Train 3 that only make sense while training: skipped at inference.
TRAINING_ONLY = dict.fromkeys(("RandomZoom", "RandomAxisFlip", "RandomSpatialFlip", "RandomRotate2D", "RandomRotate3D", "AddGaussianNoise", "ScaleIntensityOscillation", "RandomGaussianSmooth", "RandomMRBiasField", "CropFixedSizeRandomCenter", "CropByPosNegRatio", "FastCropByPosNegRatio", "CropRandomSizeWithDisplacement", "CropForegroundObject", "FastPosNegRatioCropROI", "CropSubVolumePosNegRatioCtrlEpoch", "RandomCropSubVolume", "NPRandomFlip3D", "NPRandomZoom3D", "AdjustContrast", "RandomBrightness", "RandomContrast", "RandomShift"), "it is a training-time augmentation or crop and has no meaning at inference")

TRANSFORMS = Registry("transform", skipped=TRAINING_ONLY)


@dataclasses.dataclass
class FieldMeta:
    """Geometry of one data key: the grid of its spatial axes, and what it was before resampling."""

    grid: Grid
    is_label: bool = False
    #: the grid the data were loaded on, before any resampling or reorientation
    original: Grid | None = None

    def copy(self, **changes: Any) -> FieldMeta:
        return dataclasses.replace(self, **changes)


class Sample(dict):
    """``key → array`` plus ``meta[key]`` geometry; the dictionary Clara transforms work on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meta: dict[str, FieldMeta] = {}

    def array(self, key: str, who: str) -> np.ndarray:
        if key not in self:
            raise ConfigError(f"{who}: the data have no field {key!r} (fields now: {', '.join(sorted(self)) or 'none'}).")
        value = self[key]
        if not isinstance(value, np.ndarray):
            raise ConfigError(f"{who}: field {key!r} is not loaded yet; put a Load transform first.")
        return value

    def put(self, key: str, array: np.ndarray, meta: FieldMeta) -> None:
        self[key] = array
        self.meta[key] = meta


class Transform(Component):
    """A pre- or post-transform: changes the sample in place."""

    def __call__(self, sample: Sample) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def spatial(array: np.ndarray) -> tuple[int, int, int]:
    """The (X, Y, Z) size of ``[X, Y, Z]`` or ``[C, X, Y, Z]``."""
    return tuple(array.shape[-3:])  # type: ignore[return-value]
