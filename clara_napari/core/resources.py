"""Resource limits: a run's peak memory and window count, estimated before the work starts.

:func:`check_run_memory` runs between reading a volume's header and reading its voxels (see
``read_volume(before_voxels=...)``): from the header (size, spacing, voxel type) and the app
config (resampling pre-transforms, channels, window size, batches in flight) it estimates the
bytes alive at the peak of each stage and refuses, with the figures, a run that does not fit in
the memory available. :func:`check_inference` runs again right before the scanning windows with
the exact array and model: the number of windows (at most :func:`max_windows`) and the memory of
the accumulator plus the windows in flight.

The estimate is deliberately pessimistic (every copy the steps make is counted as alive at once
within a stage); stages do not add up, the run's need is the largest stage. The factors were
calibrated against the process's resident memory (which keeps freed arrays for a while) on the
two bundled apps and their real volumes: measured peak above the idle process 460 MiB (brain,
181x217x181 uint8) and 479 MiB (lung, 512x512x61 int16), estimated 467 and 784 MiB.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ResourceError
from .volume_headers import VolumeHeader

GiB = 1024**3
F32 = 4
#: Default most windows one volume may need (override: ``$CLARA_NAPARI_MAX_WINDOWS``).
MAX_WINDOWS = 5000
#: Fraction of the available memory a run may plan to use.
USABLE_FRACTION = 0.9


@dataclass
class MemoryEstimate:
    """Bytes alive at the peak of each stage of one run."""

    stages: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.stages.values(), default=0)

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda stage: self.stages[stage]) if self.stages else ""


def available_memory() -> int | None:
    """Bytes this process may still use: ``$CLARA_NAPARI_MEMORY_LIMIT_GIB`` if set, else the smaller
    of the kernel's MemAvailable and the cgroup's remaining limit."""
    override = os.environ.get("CLARA_NAPARI_MEMORY_LIMIT_GIB")
    if override:
        try:
            value = float(override)
        except ValueError:
            raise ResourceError(f"$CLARA_NAPARI_MEMORY_LIMIT_GIB={override!r} is not a number of GiB.") from None
        if not value > 0:
            raise ResourceError(f"$CLARA_NAPARI_MEMORY_LIMIT_GIB={override!r} must be positive.")
        return int(value * GiB)
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def max_windows() -> int:
    """Most windows one volume may need: ``$CLARA_NAPARI_MAX_WINDOWS`` or :data:`MAX_WINDOWS`."""
    value = os.environ.get("CLARA_NAPARI_MAX_WINDOWS")
    if not value:
        return MAX_WINDOWS
    try:
        number = int(value)
    except ValueError:
        raise ResourceError(f"$CLARA_NAPARI_MAX_WINDOWS={value!r} is not a whole number.") from None
    if number < 1:
        raise ResourceError(f"$CLARA_NAPARI_MAX_WINDOWS={value!r} must be at least 1.")
    return number


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


# -- the whole run, from the header -------------------------------------------------------------
def inference_grid_size(header: VolumeHeader, config) -> tuple[int, int, int]:
    """The (x, y, z) size the model sees: the header's grid through the resampling pre-transforms."""
    from .geometry import Grid
    from .transforms.spatial import Resampling

    grid = Grid(header.size, header.spacing, header.origin, header.direction)
    for transform in config.pre_transforms:
        if isinstance(transform, Resampling):
            grid = transform.target(grid)
    return grid.size


def estimate_run_memory(header: VolumeHeader, config, *, out_channels: int | None = None,
                        roi: Sequence[int] | None = None, in_channels: int = 1) -> MemoryEstimate:
    """Bytes alive at the peak of each stage for ``config`` on a volume with this header."""
    from .geometry import Grid
    from .transforms.spatial import Resampling

    source = header.voxels * header.voxel_bytes
    out_channels = out_channels or max(2, len(config.labels) + 1)
    stages: dict[str, int] = {"read": 2 * source}            # SimpleITK's image + the numpy copy
    grid = Grid(header.size, header.spacing, header.origin, header.direction)
    current = header.voxels * in_channels * F32               # the float32 working copy
    stages["load"] = source + current + header.voxels * header.voxel_bytes   # cast + reorientation copy
    for index, transform in enumerate(config.pre_transforms):
        if isinstance(transform, Resampling):
            grid = transform.target(grid)
            after = math.prod(grid.size) * in_channels * F32
            # input array, its SimpleITK copy and the one before it, output image + its numpy copy
            stages[f"pre_transforms[{index}] {transform.config_name}"] = source + 3 * current + 2 * after
            current = after
        else:
            # input, output and the sorted/clipped temporaries of percentiles and ranges
            stages["intensity transforms"] = max(stages.get("intensity transforms", 0), source + 4 * current)
    inferred = math.prod(grid.size)
    padded = inferred
    windows = 0
    batch = (config.inferer.batch_size or config.batch_size or 1)
    if roi is None and not config.scanning:   # one window of the whole volume, padded
        multiple = getattr(config.inferer, "pad_to_multiple", 1)
        roi = [math.ceil(s / multiple) * multiple for s in grid.size]
    if roi is not None:
        padded = math.prod(max(s, r) for s, r in zip(grid.size, roi, strict=True))
        in_flight = getattr(config.inferer, "requests_in_flight", 1) if config.scanning else 1
        # each batch in flight: the request and the response, each held twice (array + wire copy), plus
        # as much again for the model's own working memory; and the blending weights
        windows = in_flight * batch * (in_channels + out_channels) * math.prod(roi) * F32 * 3 + math.prod(roi) * F32
    stages["inference"] = source + current + out_channels * padded * F32 + windows
    # post-transforms: scores, the label field with its connected-component labels, masks and filled
    # holes (scipy.ndimage temporaries), and the result back on the input grid (+ its writer copies)
    stages["post_transforms"] = (source + out_channels * inferred * F32 + 10 * inferred * F32
                                 + 5 * header.voxels * F32)
    return MemoryEstimate(stages)


def check_run_memory(header: VolumeHeader, config, model=None) -> MemoryEstimate:
    """Refuse a run whose estimated peak does not fit in the memory available (names the file)."""
    from .backends.base import fixed_window

    out_channels, roi = None, None
    if config.scanning:
        roi = config.inferer.roi_size
    if model is not None:
        dims = list(getattr(model.output, "dims", []))
        if len(dims) == 4 and dims[0] > 0:
            out_channels = int(dims[0])
        if roi is None and config.scanning:
            roi = fixed_window(model.spec, model.input)
    estimate = estimate_run_memory(header, config, out_channels=out_channels, roi=roi)
    available = available_memory()
    if available is not None and estimate.peak > USABLE_FRACTION * available:
        raise ResourceError(f"{header.path}: this run needs about {_gib(estimate.peak)} of memory at its peak "
                            f"({estimate.peak_stage}, {'x'.join(map(str, header.size))} voxels), only "
                            f"{_gib(available)} is available; refused before reading the voxels.")
    if roi is not None:
        check_window_count(header.path, inference_grid_size(header, config), roi, config.inferer.overlap)
    return estimate


# -- right before the windows, with the real array and model ---------------------------------------
def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows :func:`~clara_napari.core.windows.plan_windows` places, without placing them."""
    count = 1
    for size, r in zip(shape, roi, strict=True):
        padded = max(int(size), int(r))
        if padded > r:
            step = max(1.0, r * (1.0 - overlap))
            count *= math.ceil((padded - r) / step) + 1
    return count


def check_window_count(where, shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Refuse a window plan of more than :func:`max_windows` windows (with the number); returns the count."""
    windows = count_windows(shape, roi, overlap)
    limit = max_windows()
    if windows > limit:
        raise ResourceError(f"{where}: the scanning window plan needs {windows} windows of {list(roi)} (overlap "
                            f"{overlap}) for a {list(shape)} volume, more than the {limit} allowed "
                            "(raise $CLARA_NAPARI_MAX_WINDOWS, lower the overlap or enlarge roi_size).")
    return windows


def check_inference(where: str, shape: Sequence[int], roi: Sequence[int], overlap: float, *, in_channels: int,
                    out_channels: int | None, batch_size: int, in_flight: int, input_bytes: int = 0) -> None:
    """Refuse a window plan with too many windows, or whose accumulator and windows do not fit."""
    check_window_count(where, shape, roi, overlap)
    out_channels = out_channels or 2
    padded = math.prod(max(int(s), int(r)) for s, r in zip(shape, roi, strict=True))
    need = (input_bytes + out_channels * padded * F32
            + in_flight * batch_size * (in_channels + out_channels) * math.prod(roi) * F32 * 2)
    available = available_memory()
    if available is not None and need > USABLE_FRACTION * available:
        raise ResourceError(f"{where}: the scanning windows of {list(roi)} need about {_gib(need)} of memory "
                            f"(accumulator and {in_flight} x {batch_size} windows in flight), only {_gib(available)} "
                            "is available; refused.")
