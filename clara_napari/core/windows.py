"""The scanning-window engine, independent of any transport.

Windows are spread evenly over each axis so that every voxel is covered and the first and last
windows touch the edges (nnU-Net style); a volume smaller than the window is padded and the
padding cropped off again. Predictions are blended into one float32 accumulator for the output
channels and one for the weights — nothing grows with the number of windows.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from .errors import Cancelled, ConfigError, ModelMismatchError
from .interrupts import block_stop_signals, wait_result
from .progress import CancelToken, Progress

Blending = Literal["constant", "gaussian"]


class Predictor(Protocol):
    """Runs a model on a batch ``[N, C, *roi]`` and returns ``[N, C_out, *roi]``."""

    #: largest batch the model accepts (0: no batch dimension, one window per call)
    max_batch_size: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go on a (padded) volume."""

    shape: tuple[int, ...]          # spatial shape of the volume
    roi: tuple[int, ...]            # window size
    pad: tuple[tuple[int, int], ...]  # padding before/after per axis
    starts: tuple[tuple[int, ...], ...]  # window start positions per axis (padded coordinates)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pad, strict=True))

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def windows(self) -> Iterator[tuple[slice, ...]]:
        for corner in itertools.product(*self.starts):
            yield tuple(slice(c, c + r) for c, r in zip(corner, self.roi, strict=True))


def axis_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """Evenly spread window starts covering ``[0, size)`` with at least ``overlap`` between neighbours."""
    if size <= roi:
        return (0,)
    step = max(1.0, roi * (1.0 - overlap))
    count = math.ceil((size - roi) / step) + 1
    return tuple(int(round(v)) for v in np.linspace(0, size - roi, count))


def plan_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> WindowPlan:
    shape, roi = tuple(int(s) for s in shape), tuple(int(r) for r in roi)
    if len(roi) != len(shape) or any(r <= 0 for r in roi):
        raise ConfigError(f"the window size {list(roi)} must have {len(shape)} positive sizes.")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"the window overlap {overlap} must be in [0, 1).")
    pad = tuple(((r - s) // 2, r - s - (r - s) // 2) if s < r else (0, 0) for s, r in zip(shape, roi, strict=True))
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pad, strict=True))
    return WindowPlan(shape, roi, pad, tuple(axis_starts(p, r, overlap) for p, r in zip(padded, roi, strict=True)))


def importance_map(roi: Sequence[int], blending: Blending, sigma_scale: float = 0.125) -> np.ndarray:
    """Per-window blending weights: ones, or a gaussian with sigma ``roi/8`` (strictly positive)."""
    return _importance_map(tuple(int(r) for r in roi), blending, float(sigma_scale)).copy()


@functools.lru_cache(maxsize=2)
def _importance_map(roi: tuple[int, ...], blending: Blending, sigma_scale: float) -> np.ndarray:
    """:func:`importance_map`, computed once per window size (read-only; the engine shares it).

    The gaussian is the product of one profile per axis, normalised to a maximum of 1 and
    floored at its smallest positive value (at least 1e-6); it is built plane by plane in
    float64 with the same operations, element for element, as the whole-array formula, so the
    result is the same bit for bit, in a fraction of the time and memory.
    """
    if blending == "constant":
        weights = np.ones(roi, dtype=np.float32)
        weights.flags.writeable = False
        return weights
    if blending != "gaussian":
        raise ConfigError(f"unknown blending {blending!r} (use 'constant' or 'gaussian').")
    profiles = []
    for r in roi:
        centre, sigma = (r - 1) / 2.0, max(r * sigma_scale, 1e-3)
        profiles.append(np.exp(-0.5 * ((np.arange(r) - centre) / sigma) ** 2))
    if len(roi) < 2:
        return _importance_map_whole(roi, profiles)
    # rounding is monotonic, so the extremes of the products are the products of the extremes
    top, bottom = 1.0 * profiles[0].max(), 1.0 * profiles[0].min()
    for profile in profiles[1:]:
        top, bottom = top * profile.max(), bottom * profile.min()
    if not (bottom > 0 and top > 0):   # underflow somewhere: the plain formula decides
        return _importance_map_whole(roi, profiles)
    floor = max(bottom / top, 1e-6)
    head = np.ones(roi[:-1], dtype=np.float64)
    for axis, profile in enumerate(profiles[:-1]):
        head = head * profile.reshape([-1 if a == axis else 1 for a in range(len(roi) - 1)])
    weights = np.empty(roi, dtype=np.float32)
    plane = np.empty(roi[1:], dtype=np.float64)
    last = profiles[-1]
    for i in range(roi[0]):
        np.multiply(head[i][..., None], last, out=plane)
        plane /= top
        np.maximum(plane, floor, out=plane)
        weights[i] = plane
    weights.flags.writeable = False
    return weights


def _importance_map_whole(roi: tuple[int, ...], profiles: list[np.ndarray]) -> np.ndarray:
    weights = np.ones(roi, dtype=np.float64)
    for axis, profile in enumerate(profiles):
        weights = weights * profile.reshape([-1 if a == axis else 1 for a in range(len(roi))])
    weights /= weights.max()
    floor = weights[weights > 0].min() if (weights > 0).any() else 1.0
    weights = np.maximum(weights, max(floor, 1e-6)).astype(np.float32)
    weights.flags.writeable = False
    return weights


def sliding_window(
    image: np.ndarray,
    predictor: Predictor,
    roi: Sequence[int],
    *,
    overlap: float = 0.25,
    blending: Blending = "constant",
    batch_size: int = 1,
    in_flight: int = 1,
    pad_value: float = 0.0,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    mirror_axes: Sequence[int] = (),
) -> np.ndarray:
    """Run ``predictor`` over ``image`` ``[C, *spatial]`` in windows and stitch ``[C_out, *spatial]``.

    ``mirror_axes`` (spatial axes, 0 = the first after the channels): test-time augmentation,
    each window is also predicted mirrored along every combination of these axes (2^k
    predictions, as nnU-Net and MONAI do) and the mirrored-back predictions averaged.

    ``in_flight`` batches are kept running at once (in threads) so a remote server never waits
    while this side stitches; results are blended in order, so the output does not depend on it.
    Cancellation is checked between batches; pending batches are abandoned and running ones
    awaited before :class:`Cancelled` is raised.
    """
    if image.ndim < 2:
        raise ConfigError(f"the scanning window needs a channels-first array, got shape {image.shape}.")
    plan = plan_windows(image.shape[1:], roi, overlap)
    limit = predictor.max_batch_size
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    if limit == 0 and batch_size > 1:
        batch_size = 1
    elif limit > 0 and batch_size > limit:
        raise ModelMismatchError(f"batch_size {batch_size} is larger than the model's max_batch_size {limit}.")
    unit = blending == "constant"   # all weights 1.0: nothing to multiply, no weight array to hold
    weights_window = None if unit else _importance_map(plan.roi, blending, 0.125)
    scratch = np.empty(_slab_shape(plan.roi), dtype=np.float32)
    output: np.ndarray | None = None
    total = len(plan)
    done = 0
    progress = progress or (lambda done, total: None)
    progress(0, total)

    def batches() -> Iterator[list[tuple[slice, ...]]]:
        windows = plan.windows()
        while chunk := list(itertools.islice(windows, batch_size)):
            yield chunk

    def run(chunk: list[tuple[slice, ...]]) -> np.ndarray:
        batch = _extract(image, plan, chunk, pad_value)
        return _predict_mirrored(predictor, batch, mirror_axes) if mirror_axes else predictor.predict(batch)

    def stitch(chunk, result) -> None:
        nonlocal output, done
        expected = (len(chunk),) + plan.roi
        if result.ndim != len(plan.roi) + 2 or (result.shape[0],) + result.shape[2:] != expected:
            raise ModelMismatchError(
                f"the model returned shape {list(result.shape)} for a batch of {len(chunk)} windows of "
                f"{list(plan.roi)}; it must return [N, C, {', '.join(map(str, plan.roi))}].")
        if output is None:
            output = np.empty((result.shape[1],) + plan.padded_shape, dtype=np.float32)
            output.fill(0.0)   # not np.zeros: calloc memory faults in page by page, numpy can give this huge pages
        for window, prediction in zip(chunk, result, strict=True):
            _add_weighted(output[(slice(None),) + window], prediction, weights_window, scratch, unit)
        done += len(chunk)
        progress(done, total)

    def check_cancel() -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("the inference was cancelled.")

    if in_flight <= 1:
        for chunk in batches():
            check_cancel()
            stitch(chunk, run(chunk))
    else:
        pool = cf.ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="clara-window",
                                     initializer=block_stop_signals)
        pending: deque[tuple[list, cf.Future]] = deque()
        finished = False
        try:
            for chunk in batches():
                check_cancel()
                pending.append((chunk, pool.submit(run, chunk)))
                if len(pending) >= in_flight:
                    first, future = pending.popleft()
                    stitch(first, wait_result(future))
            while pending:
                check_cancel()
                first, future = pending.popleft()
                stitch(first, wait_result(future))
            finished = True
        finally:
            # stopped (Ctrl-C, cancel, an error): queued batches are dropped and running ones are not
            # waited for, so the clean-up starts at once; their results go nowhere
            pool.shutdown(wait=finished, cancel_futures=True)
    assert output is not None
    _normalise(output, plan, weights_window)
    crop = tuple(slice(a, a + s) for (a, _), s in zip(plan.pad, plan.shape, strict=True))
    return output[(slice(None),) + crop] if any(a or b for a, b in plan.pad) else output


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the mirrorings test-time augmentation predicts."""
    axes = tuple(sorted({int(a) for a in axes}))
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def _predict_mirrored(predictor: Predictor, batch: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """The mean of the predictions of ``batch`` ``[N, C, *roi]`` mirrored along each combination of
    spatial ``axes``, each mirrored back before adding."""
    combos = mirror_combinations(axes)
    total: np.ndarray | None = None
    for combo in combos:
        flip = tuple(2 + a for a in combo)
        result = np.asarray(predictor.predict(np.ascontiguousarray(np.flip(batch, flip)) if flip else batch))
        if result.ndim != batch.ndim or result.shape[0] != batch.shape[0] or result.shape[2:] != batch.shape[2:]:
            return result   # the caller's shape check names the mismatch
        result = np.flip(result, flip) if flip else result
        if total is None:
            total = result.astype(np.float32, copy=True)
        else:
            total += result
    assert total is not None
    total /= np.float32(len(combos))
    return total


#: voxels per slab when stitching and normalising (about 1 MB of float32: stays in the CPU caches)
SLAB_VOXELS = 1 << 18


def _slab_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Planes along the first axis of ``shape`` that hold about :data:`SLAB_VOXELS` voxels."""
    plane = math.prod(shape[1:])
    return (max(1, min(shape[0], SLAB_VOXELS // max(plane, 1))),) + tuple(shape[1:])


def _extract(image: np.ndarray, plan: WindowPlan, chunk: Sequence[tuple[slice, ...]], pad_value: float) -> np.ndarray:
    """The batch ``[N, C, *roi]`` of windows (padded coordinates) cut from the unpadded ``image``.

    Windows reaching into the padding get ``pad_value`` there, as if the image had been padded
    (without ever holding a padded copy of the whole image).
    """
    batch = np.empty((len(chunk), image.shape[0]) + plan.roi, dtype=image.dtype)
    for item, window in zip(batch, chunk, strict=True):
        source = tuple(slice(max(w.start - a, 0), min(w.stop - a, size))
                       for w, (a, _), size in zip(window, plan.pad, plan.shape, strict=True))
        if all(s.stop - s.start == r for s, r in zip(source, plan.roi, strict=True)):
            item[...] = image[(slice(None),) + source]
        else:
            item.fill(pad_value)
            target = tuple(slice(s.start + a - w.start, s.stop + a - w.start)
                           for s, w, (a, _) in zip(source, window, plan.pad, strict=True))
            item[(slice(None),) + target] = image[(slice(None),) + source]
    return batch


def _add_weighted(target: np.ndarray, prediction: np.ndarray, weights: np.ndarray | None, scratch: np.ndarray,
                  unit: bool = False) -> None:
    """``target += prediction * weights`` ([C, *roi] += [C, *roi] * [*roi]) without a window-sized temporary.

    Slab by slab through a small scratch buffer, so the product never leaves the CPU caches;
    the float32 arithmetic is the same as the one-line expression, bit for bit.
    """
    if unit or weights is None:   # constant blending (no weights): x * 1.0 == x, skip the product
        target += prediction
        return
    if prediction.dtype != np.float32:   # other dtypes: numpy's own promotion rules, as before
        target += prediction * weights
        return
    step = scratch.shape[0]
    for channel in range(prediction.shape[0]):
        for a in range(0, weights.shape[0], step):
            b = min(a + step, weights.shape[0])
            product = scratch[:b - a]
            np.multiply(prediction[channel, a:b], weights[a:b], out=product)
            np.add(target[channel, a:b], product, out=target[channel, a:b])


def _normalise(output: np.ndarray, plan: WindowPlan, weights: np.ndarray | None) -> None:
    """Divide ``output`` by the sum of the window weights at each voxel, slab by slab.

    The weight sum is built per slab of the first axis from the windows crossing it (in plan
    order, so each voxel's sum is the same float32 sum as a whole-volume accumulator would hold)
    instead of being kept for the whole volume during the run: memory stays one slab.
    """
    weight_sum = np.empty(_slab_shape(plan.padded_shape), dtype=np.float32)
    windows = list(plan.windows())
    step = weight_sum.shape[0]
    for a in range(0, plan.padded_shape[0], step):
        b = min(a + step, plan.padded_shape[0])
        slab = weight_sum[:b - a]
        slab.fill(0.0)
        for window in windows:
            first = window[0]
            lo, hi = max(a, first.start), min(b, first.stop)
            if lo < hi:
                # weights None: constant blending, every weight 1.0
                slab[(slice(lo - a, hi - a),) + window[1:]] += (1.0 if weights is None else
                                                                weights[lo - first.start:hi - first.start])
        np.divide(output[:, a:b], slab, out=output[:, a:b])

