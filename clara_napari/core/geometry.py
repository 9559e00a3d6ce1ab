"""Grids, resampling and reorientation in Clara's (x, y, z) array order.

Inside the pipeline arrays are channels-first ``[C, X, Y, Z]`` (Clara Train 3 read NIfTI with
nibabel); a :class:`Grid` carries the SimpleITK geometry of the last three axes. These helpers
convert to SimpleITK images (which index (z, y, x)) only at their boundary.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def int_xyz(values) -> tuple[int, int, int]:
    """Three values (x, y, z) as ints: a grid's size."""
    x, y, z = (int(v) for v in values)
    return x, y, z


def float_xyz(values) -> tuple[float, float, float]:
    """Three values (x, y, z) as floats: a grid's spacing or origin."""
    x, y, z = (float(v) for v in values)
    return x, y, z


@dataclasses.dataclass(frozen=True)
class Grid:
    """Size, spacing, origin and direction (SimpleITK conventions) of a voxel grid."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, volume) -> Grid:
        return cls(int_xyz(volume.size), volume.spacing, volume.origin, volume.direction)

    @classmethod
    def of_sitk(cls, image) -> Grid:
        return cls(tuple(image.GetSize()), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def with_spacing(self, spacing) -> Grid:
        """Same physical extent (origin kept at the first voxel centre), new voxel size."""
        spacing = tuple(float(s) for s in spacing)
        size = int_xyz(max(1, int(round(n * old / new))) for n, old, new in zip(self.size, self.spacing, spacing, strict=True))
        return dataclasses.replace(self, size=size, spacing=spacing)

    def with_size(self, size) -> Grid:
        """Same physical extent, a new number of voxels per axis."""
        size = tuple(int(s) for s in size)
        spacing = tuple(old * n / new for n, old, new in zip(self.size, self.spacing, size, strict=True))
        return dataclasses.replace(self, size=size, spacing=spacing)

    def close_to(self, other: Grid, tol: float = 1e-4) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
                and np.allclose(self.origin, other.origin, rtol=tol, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


def to_sitk(array_xyz: np.ndarray, grid: Grid):
    """A SimpleITK image from an ``[X, Y, Z]`` array on ``grid``."""
    import SimpleITK as sitk

    if array_xyz.dtype == np.bool_:
        array_xyz = array_xyz.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def from_sitk(image) -> np.ndarray:
    """The ``[X, Y, Z]`` array of a SimpleITK image."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def resample(array: np.ndarray, source: Grid, target: Grid, *, is_label: bool) -> np.ndarray:
    """Resample ``[C, X, Y, Z]`` (or ``[X, Y, Z]``) from ``source`` onto ``target``.

    Linear interpolation for images, nearest neighbour for labels; voxels outside the source
    get 0. The dtype is kept for labels, float32 otherwise.
    """
    import SimpleITK as sitk

    channels = array[None] if array.ndim == 3 else array
    reference = sitk.Image([int(s) for s in target.size], sitk.sitkUInt8)
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = []
    for channel in channels:
        data = channel if is_label else channel.astype(np.float32, copy=False)
        # images: voxels just beyond the source's extent take the nearest edge value, not 0
        # (0 is not background for CT or normalised data); labels: 0, i.e. background
        image = sitk.Resample(to_sitk(data, source), reference, sitk.Transform(), interpolator, 0.0,
                              sitk.sitkUnknown, not is_label)
        out.append(from_sitk(image))
    result = np.stack(out)
    return result if array.ndim == 4 else result[0]


def orientation(direction) -> str:
    """The three-letter orientation code (ITK/DICOM convention, e.g. ``LPS``) of a direction."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction))


def reorient(array: np.ndarray, grid: Grid, code: str) -> tuple[np.ndarray, Grid]:
    """Permute/flip ``[C, X, Y, Z]`` (or ``[X, Y, Z]``) axes so the grid has orientation ``code``.

    ``RAS`` here is what nibabel's ``as_closest_canonical`` gives. Exact: no interpolation.
    """
    import SimpleITK as sitk

    channels = array[None] if array.ndim == 3 else array
    out = []
    new_grid = grid
    for channel in channels:
        image = sitk.DICOMOrient(to_sitk(channel, grid), code)
        out.append(from_sitk(image))
        new_grid = Grid.of_sitk(image)
    result = np.stack(out)
    return (result if array.ndim == 4 else result[0]), new_grid


def onto_grid(array: np.ndarray, grid: Grid, target: Grid, *, is_label: bool) -> np.ndarray:
    """Bring ``[C, X, Y, Z]`` from ``grid`` onto ``target``: exact reorientation, then resampling
    only where the grids still differ."""
    if grid.close_to(target):
        return array
    if orientation(grid.direction) != orientation(target.direction):
        array, grid = reorient(array, grid, orientation(target.direction))
    if grid.close_to(target):
        return array
    return resample(array, grid, target, is_label=is_label)
