"""The scanning-window engine, independent of any transport.

Windows are spread evenly over each axis so that every voxel is covered and the first and last
windows touch the edges (nnU-Net style); a volume smaller than the window is padded and the
padding cropped off again. Predictions are blended into one float32 accumulator for the output
channels and one for the weights — nothing grows with the number of windows.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Protocol, Sequence

import numpy as np

from .errors import Cancelled, ConfigError, ModelMismatchError
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
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pad))

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def windows(self) -> Iterator[tuple[slice, ...]]:
        for corner in itertools.product(*self.starts):
            yield tuple(slice(c, c + r) for c, r in zip(corner, self.roi))


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
    pad = tuple(((r - s) // 2, r - s - (r - s) // 2) if s < r else (0, 0) for s, r in zip(shape, roi))
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pad))
    return WindowPlan(shape, roi, pad, tuple(axis_starts(p, r, overlap) for p, r in zip(padded, roi)))


def importance_map(roi: Sequence[int], blending: Blending, sigma_scale: float = 0.125) -> np.ndarray:
    """Per-window blending weights: ones, or a gaussian with sigma ``roi/8`` (strictly positive)."""
    roi = tuple(int(r) for r in roi)
    if blending == "constant":
        return np.ones(roi, dtype=np.float32)
    if blending != "gaussian":
        raise ConfigError(f"unknown blending {blending!r} (use 'constant' or 'gaussian').")
    weights = np.ones(roi, dtype=np.float64)
    for axis, r in enumerate(roi):
        centre, sigma = (r - 1) / 2.0, max(r * sigma_scale, 1e-3)
        profile = np.exp(-0.5 * ((np.arange(r) - centre) / sigma) ** 2)
        weights = weights * profile.reshape([-1 if a == axis else 1 for a in range(len(roi))])
    weights /= weights.max()
    floor = weights[weights > 0].min() if (weights > 0).any() else 1.0
    return np.maximum(weights, max(floor, 1e-6)).astype(np.float32)


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
) -> np.ndarray:
    """Run ``predictor`` over ``image`` ``[C, *spatial]`` in windows and stitch ``[C_out, *spatial]``.

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
    if any(a or b for a, b in plan.pad):
        image = np.pad(image, ((0, 0),) + plan.pad, mode="constant", constant_values=pad_value)
    weights_window = importance_map(plan.roi, blending)
    weight_sum = np.zeros(plan.padded_shape, dtype=np.float32)
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
        batch = np.stack([image[(slice(None),) + w] for w in chunk])
        return predictor.predict(batch)

    def stitch(chunk, result) -> None:
        nonlocal output, done
        expected = (len(chunk),) + plan.roi
        if result.ndim != len(plan.roi) + 2 or (result.shape[0],) + result.shape[2:] != expected:
            raise ModelMismatchError(
                f"the model returned shape {list(result.shape)} for a batch of {len(chunk)} windows of "
                f"{list(plan.roi)}; it must return [N, C, {', '.join(map(str, plan.roi))}].")
        if output is None:
            output = np.zeros((result.shape[1],) + plan.padded_shape, dtype=np.float32)
        for window, prediction in zip(chunk, result):
            output[(slice(None),) + window] += prediction * weights_window
            weight_sum[window] += weights_window
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
        with cf.ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="clara-window") as pool:
            pending: deque[tuple[list, cf.Future]] = deque()
            try:
                for chunk in batches():
                    check_cancel()
                    pending.append((chunk, pool.submit(run, chunk)))
                    if len(pending) >= in_flight:
                        first, future = pending.popleft()
                        stitch(first, future.result())
                while pending:
                    check_cancel()
                    first, future = pending.popleft()
                    stitch(first, future.result())
            finally:
                for _, future in pending:
                    future.cancel()
    assert output is not None
    output /= weight_sum
    crop = tuple(slice(a, a + s) for (a, _), s in zip(plan.pad, plan.shape))
    return output[(slice(None),) + crop] if any(a or b for a, b in plan.pad) else output


PredictFn = Callable[[np.ndarray], np.ndarray]


class FunctionPredictor:
    """Wrap a plain function as a :class:`Predictor` (tests, notebooks)."""

    def __init__(self, fn: PredictFn, max_batch_size: int = 64) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(batch)
