"""Loading, channel layout and resampling transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator

from ..errors import ConfigError
from ..geometry import Grid, onto_grid, reorient, resample
from ..registry import FieldsMixin, as_field_list
from ..volume import Volume, read_volume
from .base import TRANSFORMS, FieldMeta, Sample, Transform, spatial

Dtype = Literal["float16", "float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"]
Positive3 = list[float]


def _three_positive(value: list[float]) -> list[float]:
    if len(value) != 3 or any(v <= 0 for v in value):
        raise ValueError("needs three positive numbers [x, y, z]")
    return value


@TRANSFORMS.register("LoadNifti", "LoadImage", "LoadVolume")
class LoadNifti(FieldsMixin, Transform):
    """Read the field's file (any supported format, not only NIfTI) into an ``[X, Y, Z]`` array.

    ``as_closest_canonical`` reorients to RAS as nibabel did for Clara Train 3 (exact axis
    permutation and flips; the original grid is remembered for the way back).
    """

    dtype: Dtype = "float32"
    as_closest_canonical: bool = False

    @field_validator("as_closest_canonical", mode="before")
    @classmethod
    def _boolean_text(cls, value):
        """An NVIDIA example config passes the flag as the string "false"; take "true"/"false" as such."""
        return {"true": True, "false": False}.get(value.lower(), value) if isinstance(value, str) else value

    def __call__(self, sample: Sample) -> None:
        for key in self.fields:
            value = sample.get(key)
            if isinstance(value, (str, Path)):
                value = read_volume(value)
            if not isinstance(value, Volume):
                # already an array (e.g. a second Load on the same key): nothing to do
                continue
            array = value.array.transpose(2, 1, 0).astype(self.dtype, copy=False)
            grid = Grid.of(value)
            meta = FieldMeta(grid=grid, original=grid)
            if self.as_closest_canonical:
                array, meta.grid = reorient(array, grid, "RAS")
            sample.put(key, array, meta)


@TRANSFORMS.register("ConvertToChannelsFirst")
class ConvertToChannelsFirst(FieldsMixin, Transform):
    """``[X, Y, Z]`` → ``[1, X, Y, Z]`` (a field that already has channels is left alone)."""

    def __call__(self, sample: Sample) -> None:
        for key in self.fields:
            array = sample.array(key, self.config_name)
            if array.ndim == 3:
                sample[key] = array[None]


class Resampling(FieldsMixin, Transform):
    is_label: bool = False

    def target(self, grid: Grid) -> Grid:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, sample: Sample) -> None:
        for key in self.fields:
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            target = self.target(meta.grid)
            is_label = self.is_label or meta.is_label
            out = resample(array, meta.grid, target, is_label=is_label)
            sample.put(key, out, meta.copy(grid=target, original=meta.original or meta.grid))


@TRANSFORMS.register("ScaleByResolution")
class ScaleByResolution(Resampling):
    """Resample to ``target_resolution`` [x, y, z] mm (linear; nearest for labels)."""

    target_resolution: Positive3

    _check = field_validator("target_resolution")(_three_positive)

    def target(self, grid: Grid) -> Grid:
        return grid.with_spacing(self.target_resolution)


@TRANSFORMS.register("ScaleBySpacing")
class ScaleBySpacing(Resampling):
    """Resample to ``target_spacing`` [x, y, z] mm."""

    target_spacing: Positive3

    _check = field_validator("target_spacing")(_three_positive)

    def target(self, grid: Grid) -> Grid:
        return grid.with_spacing(self.target_spacing)


@TRANSFORMS.register("ScaleByFactor")
class ScaleByFactor(Resampling):
    """Multiply the number of voxels along each axis by ``scale_factor`` (one number or [x, y, z]).

    Published Clara 3 configs (HeaortaNet) name it ``factor``; both are accepted.
    """

    scale_factor: float | list[float] = Field(..., validation_alias=AliasChoices("scale_factor", "factor"))

    @field_validator("scale_factor")
    @classmethod
    def _positive(cls, value):
        values = [value] if isinstance(value, (int, float)) else value
        if len(values) not in (1, 3) or any(v <= 0 for v in values):
            raise ValueError("needs a positive number or three positive numbers [x, y, z]")
        return value

    def target(self, grid: Grid) -> Grid:
        factors = [self.scale_factor] * 3 if isinstance(self.scale_factor, (int, float)) else self.scale_factor
        factors = factors * 3 if len(factors) == 1 else factors
        return grid.with_size([max(1, round(n * f)) for n, f in zip(grid.size, factors, strict=True)])


@TRANSFORMS.register("ScaleToShape")
class ScaleToShape(Resampling):
    """Resample to ``target_shape`` [x, y, z] voxels over the same physical extent."""

    target_shape: list[int]

    @field_validator("target_shape")
    @classmethod
    def _positive(cls, value):
        if len(value) != 3 or any(v <= 0 for v in value):
            raise ValueError("needs three positive whole numbers [x, y, z]")
        return value

    def target(self, grid: Grid) -> Grid:
        return grid.with_size(self.target_shape)


@TRANSFORMS.register("RestoreOriginalShape")
class RestoreOriginalShape(Transform):
    """Bring ``field`` back onto the grid ``src_field`` was loaded on (undo resampling/reorientation)."""

    field: str = "model"
    src_field: str = "image"
    is_label: bool = True

    def __call__(self, sample: Sample) -> None:
        array = sample.array(self.field, self.config_name)
        sample.array(self.src_field, self.config_name)
        src = sample.meta[self.src_field]
        meta = sample.meta.get(self.field, src)
        original = src.original or src.grid
        out = onto_grid(array, meta.grid, original, is_label=self.is_label or meta.is_label)
        sample.put(self.field, out, meta.copy(grid=original, original=original))


@TRANSFORMS.register("CopyProperties")
class CopyProperties(FieldsMixin, Transform):
    """Copy the geometry of ``from_field`` to ``fields`` (Clara's affine properties)."""

    fields: list[str] = ["model"]
    from_field: str = "image"
    properties: list[str] = ["affine", "original_affine", "as_canonical"]

    _normalise_properties = field_validator("properties", mode="before")(as_field_list)

    @field_validator("properties")
    @classmethod
    def _known(cls, value):
        allowed = {"affine", "original_affine", "as_canonical", "original_shape", "spacing", "original_spacing"}
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"unknown property {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
        return value

    def __call__(self, sample: Sample) -> None:
        sample.array(self.from_field, self.config_name)
        src = sample.meta[self.from_field]
        for key in self.fields:
            array = sample.array(key, self.config_name)
            if spatial(array) != src.grid.size:
                raise ConfigError(f"{self.config_name}: field {key!r} has size {spatial(array)}, "
                                 f"{self.from_field!r} has {src.grid.size}; resample before copying geometry.")
            meta = sample.meta.get(key, src)
            updates: dict[str, Grid | None] = {}
            if {"affine", "as_canonical", "spacing"} & set(self.properties):
                updates["grid"] = src.grid
            if {"original_affine", "original_shape", "original_spacing"} & set(self.properties):
                updates["original"] = src.original
            sample.meta[key] = meta.copy(**updates)
