"""Clara 4 (MONAI-style) inference-time transforms on the project's own numpy/SimpleITK engine.

Clara Train 4 configs name MONAI's dictionary transforms (``LoadImaged``, ``Spacingd`` …) with
``keys`` instead of ``fields``. Nothing here imports MONAI or any code a config names: each name
is a registered class that does what MONAI's transform does at inference, on the same
``[C, X, Y, Z]`` arrays and per-key geometry (``sample.meta``) as the Clara 3 transforms, so the
way back to the input grid (``Invertd``, the writers) is exact in the same way.

Keys a validation config names that do not exist at inference (``label``) are skipped; the
loader lists them (:attr:`InferenceConfig.skipped`).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..geometry import Grid, onto_grid, reorient, resample
from ..registry import as_field_list
from .base import TRANSFORMS, FieldMeta, Sample, Transform
from .intensity import ScaleIntensityRange
from .spatial import Dtype, LoadNifti

#: every Clara 4 name registered here or in ``components`` (used to recognise the format)
MONAI_STYLE_NAMES = frozenset({
    "LoadImaged", "LoadNiftid", "EnsureChannelFirstd", "AddChanneld", "Spacingd", "Orientationd",
    "ScaleIntensityRanged", "NormalizeIntensityd", "CropForegroundd", "ToTensord", "EnsureTyped", "ToNumpyd",
    "Activationsd", "AsDiscreted", "KeepLargestConnectedComponentd", "Invertd", "SaveImaged",
    "SlidingWindowInferer",
})


def _one_per_key(value: Any, keys: list[str], name: str) -> list[Any]:
    """MONAI's per-key args: one value for all keys, or a list with one value per key."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(keys):
            raise ConfigError(f"{name}: {len(value)} values for {len(keys)} keys.")
        return list(value)
    return [value] * len(keys)


class MonaiTransform(Transform):
    """``keys``: one data key or a list; keys absent at inference (``label``) are skipped."""

    keys: list[str]
    allow_missing_keys: bool = False

    _normalise_keys = field_validator("keys", mode="before")(as_field_list)

    def present(self, sample: Sample) -> list[tuple[int, str]]:
        return [(i, key) for i, key in enumerate(self.keys) if key in sample]


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
        modes = _one_per_key(self.mode, self.keys, self.config_name)
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
        code = "RAS" if self.as_closest_canonical else self.axcodes.upper()
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
    origin = tuple(float(o) for o in np.asarray(grid.origin, dtype=float) + offset)
    return Grid(tuple(int(b - a) for a, b in zip(lo, hi)), grid.spacing, origin, grid.direction)


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


@TRANSFORMS.register("Activationsd")
class Activationsd(MonaiTransform):
    """``softmax`` across channels or ``sigmoid`` (``other``, a Python callable, is never accepted)."""

    softmax: bool | list[bool] = False
    sigmoid: bool | list[bool] = False

    def __call__(self, sample: Sample) -> None:
        softmax = _one_per_key(self.softmax, self.keys, self.config_name)
        sigmoid = _one_per_key(self.sigmoid, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name).astype(np.float32)
            if softmax[index]:
                array = np.exp(array - array.max(axis=0, keepdims=True))
                array /= array.sum(axis=0, keepdims=True)
            elif sigmoid[index]:
                array = 1.0 / (1.0 + np.exp(-array))
            sample[key] = array.astype(np.float32)


@TRANSFORMS.register("AsDiscreted")
class AsDiscreted(MonaiTransform):
    """``argmax`` across channels → a ``[1, X, Y, Z]`` label map, or a ``threshold`` (``threshold_values``
    with ``logit_thresh`` in Clara 4.0). ``to_onehot`` is accepted: the label map written is the
    same information (one channel per class is never written)."""

    argmax: bool | list[bool] = False
    to_onehot: bool | int | None | list[bool | int | None] = None
    n_classes: int | list[int] | None = None
    num_classes: int | list[int] | None = None
    threshold_values: bool | list[bool] = False
    logit_thresh: float | list[float] = 0.5
    threshold: float | list[float] | None = None
    rounding: str | None = None
    dtype: Any = None

    def __call__(self, sample: Sample) -> None:
        argmax = _one_per_key(self.argmax, self.keys, self.config_name)
        threshold_on = _one_per_key(self.threshold_values, self.keys, self.config_name)
        logit = _one_per_key(self.logit_thresh, self.keys, self.config_name)
        threshold = _one_per_key(self.threshold, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            if argmax[index]:
                labels = np.argmax(array, axis=0)[None] if array.ndim == 4 else array > 0.5
            elif threshold[index] is not None or threshold_on[index]:
                value = threshold[index] if threshold[index] is not None else logit[index]
                labels = array >= value
            elif self.rounding == "torchrounding":
                labels = np.round(array)
            else:
                continue
            sample.put(key, labels.astype(np.uint8), meta.copy(is_label=True))


@TRANSFORMS.register("KeepLargestConnectedComponentd")
class KeepLargestConnectedComponentd(MonaiTransform):
    """Keep the largest connected component of each label in ``applied_labels`` (default: every
    non-zero label); ``connectivity`` 1..3 (default 3, MONAI's full connectivity)."""

    applied_labels: int | list[int] | None = None
    independent: bool = True
    connectivity: Literal[1, 2, 3] | None = None
    is_onehot: bool | None = None
    num_components: int = Field(1, ge=1)

    def __call__(self, sample: Sample) -> None:
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(3, self.connectivity or 3)
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name)
            spatial = array[0] if array.ndim == 4 else array
            if array.ndim == 4 and array.shape[0] != 1:
                raise ConfigError(f"{self.config_name}: key {key!r} has {array.shape[0]} channels; "
                                  "put AsDiscreted(argmax) first.")
            out = spatial.copy()
            values = [int(v) for v in np.unique(spatial) if v != 0]
            applied = values if self.applied_labels is None else \
                [v for v in ([self.applied_labels] if isinstance(self.applied_labels, int) else self.applied_labels)]
            groups = [[v] for v in applied] if self.independent else [applied]
            for group in groups:
                mask = np.isin(spatial, group)
                labelled, count = ndimage.label(mask, structure=structure)
                if count <= 1:
                    continue
                sizes = np.bincount(labelled.ravel())[1:]
                keep = np.argsort(sizes)[::-1][: self.num_components] + 1
                out[mask & ~np.isin(labelled, keep)] = 0
            sample[key] = out[None] if array.ndim == 4 else out


@TRANSFORMS.register("Invertd")
class Invertd(MonaiTransform):
    """Bring ``keys`` back onto the grid ``orig_keys`` was loaded on (undoes Spacingd, Orientationd,
    CropForegroundd …): exact reorientation, then resampling (nearest with ``nearest_interp`` or
    for labels, else linear)."""

    transform: str = "@pre_transforms"
    orig_keys: list[str] | str = "image"
    meta_keys: Any = None
    orig_meta_keys: Any = None
    meta_key_postfix: str = "meta_dict"
    nearest_interp: bool | list[bool] = True
    to_tensor: bool | list[bool] = True
    device: Any = None
    post_func: Any = None

    @field_validator("transform")
    @classmethod
    def _reference(cls, value):
        if value != "@pre_transforms":
            raise ValueError("only '@pre_transforms' can be inverted")
        return value

    @field_validator("post_func")
    @classmethod
    def _no_code(cls, value):
        if value is not None:
            raise ValueError("post_func would run code; it is not accepted")
        return value

    def __call__(self, sample: Sample) -> None:
        origs = _one_per_key(self.orig_keys, self.keys, self.config_name)
        nearest = _one_per_key(self.nearest_interp, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name)
            sample.array(origs[index], self.config_name)
            src: FieldMeta = sample.meta[origs[index]]
            meta = sample.meta.get(key, src)
            original = src.original or src.grid
            out = onto_grid(array, meta.grid, original, is_label=bool(nearest[index]) or meta.is_label)
            sample.put(key, out, meta.copy(grid=original, original=original))
