"""Clara 4 (MONAI-style) inference-time transforms on the project's own numpy/SimpleITK engine.

Clara Train 4 configs name MONAI's dictionary transforms (``LoadImaged``, ``Spacingd`` …) with
``keys`` instead of ``fields``. Nothing here imports MONAI or any code a config names: each name
is a registered class that does what MONAI's transform does at inference, on the same
``[C, X, Y, Z]`` arrays and per-key geometry (``sample.meta``) as the Clara 3 transforms, so the
way back to the input grid (``Invertd``, the writers) is exact in the same way.

Keys a validation config names that do not exist at inference (``label``) are skipped; the
loader lists them (:attr:`InferenceConfig.skipped`). The pre-transforms are here, the
post-transforms (``Activationsd`` … ``Invertd``) in :mod:`.monai_post`, what both share (``keys``,
one value per key) in :mod:`.monai_base`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import field_validator

from ..errors import ConfigError
from ..geometry import Grid, float_xyz, int_xyz, reorient, resample
from .base import TRANSFORMS, Sample
from .intensity import ScaleIntensityRange
from .monai_base import MonaiTransform, one_per_key
from .spatial import Dtype, LoadNifti

#: every Clara 4 name registered here or in ``components`` (used to recognise the format)
MONAI_STYLE_NAMES = frozenset({
    "LoadImaged", "LoadNiftid", "EnsureChannelFirstd", "AddChanneld", "Spacingd", "Orientationd",
    "ScaleIntensityRanged", "NormalizeIntensityd", "CropForegroundd", "ToTensord", "EnsureTyped", "ToNumpyd",
    "Activationsd", "AsDiscreted", "KeepLargestConnectedComponentd", "Invertd", "SaveImaged",
    "SlidingWindowInferer",
})


@TRANSFORMS.register("LoadImaged", "LoadNiftid")
class LoadImaged(MonaiTransform):
    """Read the key's volume into ``[X, Y, Z]`` as MONAI's readers do (no reorientation)."""

    reader: str | None = None
    image_only: bool = False
    dtype: Dtype = "float32"
    meta_keys: list[str] | str | None = None
    meta_key_postfix: str = "meta_dict"
    overwriting: bool = False
    ensure_channel_first: bool = False

    def __call__(self, sample: Sample) -> None:
        keys = [key for _, key in self.present(sample)]
        LoadNifti(fields=keys, dtype=self.dtype)(sample)
        if self.ensure_channel_first:
            EnsureChannelFirstd(keys=keys)(sample)


@TRANSFORMS.register("EnsureChannelFirstd", "AddChanneld")
class EnsureChannelFirstd(MonaiTransform):
    """``[X, Y, Z]`` → ``[1, X, Y, Z]`` (a key that already has channels is left alone)."""

    meta_keys: list[str] | str | None = None
    meta_key_postfix: str = "meta_dict"
    strict_check: bool = True
    channel_dim: int | str | None = None

    def __call__(self, sample: Sample) -> None:
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name)
            if array.ndim == 3:
                sample[key] = array[None]


@TRANSFORMS.register("Spacingd")
class Spacingd(MonaiTransform):
    """Resample to ``pixdim`` mm (x, y, z; fewer values keep the remaining spacings).

    ``mode`` per key: ``nearest`` for labels, else linear (``bilinear``); the direction is kept.
    """

    pixdim: float | list[float]
    mode: str | list[str] = "bilinear"
    padding_mode: str | list[str] = "border"
    align_corners: bool | list[bool] = False
    diagonal: bool = False
    dtype: Any = None
    meta_keys: list[str] | str | None = None
    meta_key_postfix: str = "meta_dict"

    @field_validator("pixdim")
    @classmethod
    def _positive(cls, value):
        values = [value] if isinstance(value, (int, float)) else value
        if not 1 <= len(values) <= 3 or any(v <= 0 for v in values):
            raise ValueError("needs one to three positive numbers [x, y, z]")
        return value

    @field_validator("mode")
    @classmethod
    def _modes(cls, value):
        for mode in [value] if isinstance(value, str) else value:
            if mode not in ("bilinear", "nearest", "linear", "trilinear", "bicubic", 0, 1, 3):
                raise ValueError(f"unknown interpolation mode {mode!r} (bilinear or nearest)")
        return value

    def __call__(self, sample: Sample) -> None:
        modes = one_per_key(self.mode, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            pixdim = [self.pixdim] if isinstance(self.pixdim, (int, float)) else list(self.pixdim)
            spacing = [float(v) for v in pixdim] + list(meta.grid.spacing[len(pixdim):])
            target = meta.grid.with_spacing(spacing)
            is_label = modes[index] == "nearest" or meta.is_label
            out = resample(array, meta.grid, target, is_label=is_label)
            sample.put(key, out, meta.copy(grid=target, original=meta.original or meta.grid))


@TRANSFORMS.register("Orientationd")
class Orientationd(MonaiTransform):
    """Permute/flip the axes to ``axcodes`` (nibabel's convention, e.g. ``RAS``): exact, no interpolation."""

    axcodes: str | None = None
    as_closest_canonical: bool = False
    labels: Any = None
    meta_keys: list[str] | str | None = None
    meta_key_postfix: str = "meta_dict"

    @field_validator("axcodes")
    @classmethod
    def _codes(cls, value):
        if value is not None and (len(value) != 3 or sorted(value.upper().replace("L", "R").replace("P", "A")
                                                           .replace("I", "S")) != ["A", "R", "S"]):
            raise ValueError("needs three axis codes such as 'RAS' or 'LPS'")
        return value

    def __call__(self, sample: Sample) -> None:
        if self.axcodes is None and not self.as_closest_canonical:
            raise ConfigError(f"{self.config_name}: give axcodes (e.g. 'RAS') or as_closest_canonical.")
        code = "RAS" if self.as_closest_canonical or self.axcodes is None else self.axcodes.upper()
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            # SimpleITK's DICOMOrient names the directions axes point to, as nibabel's codes do
            out, grid = reorient(array, meta.grid, code)
            sample.put(key, out, meta.copy(grid=grid, original=meta.original or meta.grid))


@TRANSFORMS.register("ScaleIntensityRanged")
class ScaleIntensityRanged(MonaiTransform):
    """Map [a_min, a_max] linearly onto [b_min, b_max], optionally clipping (as ``ScaleIntensityRange``)."""

    a_min: float
    a_max: float
    b_min: float
    b_max: float
    clip: bool = False
    dtype: Any = None

    def __call__(self, sample: Sample) -> None:
        ScaleIntensityRange(fields=[k for _, k in self.present(sample)], a_min=self.a_min, a_max=self.a_max,
                            b_min=self.b_min, b_max=self.b_max, clip=self.clip)(sample)


@TRANSFORMS.register("NormalizeIntensityd")
class NormalizeIntensityd(MonaiTransform):
    """``(v - subtrahend) / divisor``; by default the mean and standard deviation (of the non-zero
    voxels with ``nonzero``, of each channel with ``channel_wise``). Zeros stay zero with ``nonzero``."""

    subtrahend: float | None = None
    divisor: float | None = None
    nonzero: bool = False
    channel_wise: bool = False
    dtype: Any = None

    def normalise(self, values: np.ndarray) -> np.ndarray:
        mean = float(values.mean()) if self.subtrahend is None else self.subtrahend
        std = float(values.std()) if self.divisor is None else self.divisor
        return (values - np.float32(mean)) / np.float32(std if std != 0 else 1.0)

    def __call__(self, sample: Sample) -> None:
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name).astype(np.float32)
            parts = list(array[None] if array.ndim == 3 else array) if self.channel_wise else [array]
            for part in parts:
                mask = part != 0 if self.nonzero else np.ones(part.shape, dtype=bool)
                if mask.any():
                    part[mask] = self.normalise(part[mask])
            sample[key] = array


@TRANSFORMS.register("CropForegroundd")
class CropForegroundd(MonaiTransform):
    """Crop ``keys`` to the bounding box of ``source_key`` > 0 (plus ``margin`` voxels).

    The crop moves the grid's origin to the first kept voxel; the way back (``Invertd``, the
    writers) puts the result on the input grid exactly, with background outside the box.
    """

    source_key: str
    margin: int | list[int] = 0
    k_divisible: int | list[int] = 1
    mode: Any = None
    allow_smaller: bool = True
    start_coord_key: str = "foreground_start_coord"
    end_coord_key: str = "foreground_end_coord"

    def __call__(self, sample: Sample) -> None:
        source = sample.array(self.source_key, self.config_name)
        mask = (source > 0).any(axis=0) if source.ndim == 4 else source > 0
        if not mask.any():
            return
        margin = [self.margin] * 3 if isinstance(self.margin, int) else list(self.margin)
        divisible = [self.k_divisible] * 3 if isinstance(self.k_divisible, int) else list(self.k_divisible)
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            indices = np.flatnonzero(mask.any(axis=other))
            start = max(0, int(indices[0]) - margin[axis])
            end = min(mask.shape[axis], int(indices[-1]) + 1 + margin[axis])
            size = end - start
            extra = (-size) % max(1, divisible[axis])
            start, end = max(0, start - extra // 2), min(mask.shape[axis], end + extra - extra // 2)
            lo.append(start)
            hi.append(end)
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            if tuple(array.shape[-3:]) != tuple(mask.shape):
                raise ConfigError(f"{self.config_name}: key {key!r} and source_key {self.source_key!r} differ in size.")
            index = (Ellipsis, slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            sample.put(key, np.ascontiguousarray(array[index]),
                       meta.copy(grid=_cropped(meta.grid, lo, hi), original=meta.original or meta.grid))


def _cropped(grid: Grid, lo: list[int], hi: list[int]) -> Grid:
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    offset = direction @ (np.asarray(lo, dtype=float) * np.asarray(grid.spacing, dtype=float))
    origin = float_xyz(np.asarray(grid.origin, dtype=float) + offset)
    return Grid(int_xyz(b - a for a, b in zip(lo, hi, strict=True)), grid.spacing, origin, grid.direction)


@TRANSFORMS.register("ToTensord", "EnsureTyped", "ToNumpyd")
class ToTensord(MonaiTransform):
    """Type conversion for torch: nothing to do on numpy arrays (``device`` etc. are accepted)."""

    data_type: str = "tensor"
    dtype: Any = None
    device: str | None = None
    wrap_sequence: bool = True
    track_meta: bool | None = None

    def __call__(self, sample: Sample) -> None:
        return None
