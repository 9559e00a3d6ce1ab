"""Intensity transforms (float32 in, float32 out)."""
from __future__ import annotations

import numpy as np
from pydantic import model_validator

from ..registry import FieldsMixin
from .base import TRANSFORMS, Sample, Transform


class _Intensity(FieldsMixin, Transform):
    def apply(self, array: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, sample: Sample) -> None:
        for key in self.fields:
            array = sample.array(key, self.config_name)
            sample[key] = self.apply(array.astype(np.float32, copy=False)).astype(np.float32, copy=False)


@TRANSFORMS.register("ScaleIntensityRange")
class ScaleIntensityRange(_Intensity):
    """Map [a_min, a_max] linearly onto [b_min, b_max], optionally clipping to the latter."""

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False

    @model_validator(mode="after")
    def _range(self):
        if self.a_max == self.a_min:
            raise ValueError("a_max must differ from a_min")
        return self

    def apply(self, array):
        out = (array - np.float32(self.a_min)) * np.float32((self.b_max - self.b_min) / (self.a_max - self.a_min))
        out += np.float32(self.b_min)
        if self.clip:
            np.clip(out, min(self.b_min, self.b_max), max(self.b_min, self.b_max), out=out)
        return out


@TRANSFORMS.register("ScaleIntensityPercentiles")
class ScaleIntensityPercentiles(_Intensity):
    """Map the [lower, upper] percentiles of each field onto [b_min, b_max] (robust MRI scaling)."""

    lower: float = 0.5
    upper: float = 99.5
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    @model_validator(mode="after")
    def _range(self):
        if not 0.0 <= self.lower < self.upper <= 100.0:
            raise ValueError("needs 0 <= lower < upper <= 100")
        return self

    def apply(self, array):
        low, high = np.percentile(array, [self.lower, self.upper])
        if high <= low:
            return np.full_like(array, self.b_min)
        return ScaleIntensityRange(a_min=float(low), a_max=float(high), b_min=self.b_min,
                                   b_max=self.b_max, clip=self.clip).apply(array)


@TRANSFORMS.register("CenterData")
class CenterData(_Intensity):
    """Zero mean, unit variance over the whole field."""

    def apply(self, array):
        std = float(array.std())
        return (array - np.float32(array.mean())) / np.float32(std if std > 0 else 1.0)


@TRANSFORMS.register("NormalizeNonzeroIntensities")
class NormalizeNonzeroIntensities(_Intensity):
    """Zero mean, unit variance over the non-zero voxels of each channel; zeros stay zero."""

    def apply(self, array):
        out = array.copy()
        channels = out[None] if out.ndim == 3 else out
        for channel in channels:
            mask = channel != 0
            if mask.any():
                values = channel[mask]
                std = float(values.std())
                channel[mask] = (values - values.mean()) / (std if std > 0 else 1.0)
        return out


@TRANSFORMS.register("LinearIntensity")
class LinearIntensity(_Intensity):
    """``v * scale + offset`` (e.g. the ImageNet-style mapping some networks were trained with)."""

    scale: float = 1.0
    offset: float = 0.0

    def apply(self, array):
        return array * np.float32(self.scale) + np.float32(self.offset)
