"""The scanning-window engine: exact stitching, coverage, blending, progress, cancellation, errors."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clara_napari.core.errors import Cancelled, ConfigError, ModelMismatchError
from clara_napari.core.progress import CancelToken
from clara_napari.core.windows import axis_starts, importance_map, plan_windows, sliding_window

from helpers.predictors import FunctionPredictor

# shapes and windows small enough that one example runs in milliseconds
sizes = st.integers(1, 14)
windows = st.integers(2, 9)
overlaps = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75])
blendings = st.sampled_from(["constant", "gaussian"])


def identity() -> FunctionPredictor:
    return FunctionPredictor(lambda batch: batch.copy())


def coverage(plan) -> np.ndarray:
    """How many windows cover each voxel of the padded volume."""
    count = np.zeros(plan.padded_shape, dtype=np.int32)
    for window in plan.windows():
        count[window] += 1
    return count


@settings(max_examples=max(settings().max_examples, 150))
@given(shape=st.tuples(sizes, sizes, sizes), roi=st.tuples(windows, windows, windows), overlap=overlaps,
       blending=blendings, batch_size=st.integers(1, 4), in_flight=st.sampled_from([1, 3]),
       channels=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_identity_model_reproduces_the_input(shape, roi, overlap, blending, batch_size, in_flight, channels, seed):
    image = np.random.default_rng(seed).normal(size=(channels,) + shape).astype(np.float32)
    out = sliding_window(image, identity(), roi, overlap=overlap, blending=blending, batch_size=batch_size,
                         in_flight=in_flight, pad_value=-7.0)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


@settings(max_examples=max(settings().max_examples, 150))
@given(shape=st.tuples(sizes, sizes, sizes), roi=st.tuples(windows, windows, windows), overlap=overlaps,
       blending=blendings)
def test_every_voxel_gets_positive_weight(shape, roi, overlap, blending):
    plan = plan_windows(shape, roi, overlap)
    assert all(p >= max(s, r) for p, s, r in zip(plan.padded_shape, shape, roi, strict=True))
    count = coverage(plan)
    assert count.min() >= 1
    assert len(plan) == math.prod(len(s) for s in plan.starts) == sum(1 for _ in plan.windows())
    weights = importance_map(roi, blending)
    assert weights.shape == tuple(roi) and weights.dtype == np.float32
    assert weights.min() > 0 and weights.max() == pytest.approx(1.0)
    total = np.zeros(plan.padded_shape, np.float64)
    for window in plan.windows():
        total[window] += weights
    assert total.min() > 0
    # the original (unpadded) voxels sit inside the padded volume
    for (before, after), s, p in zip(plan.pad, shape, plan.padded_shape, strict=True):
        assert before + s + after == p and before >= 0 and after >= 0


def test_gaussian_importance_map_peaks_in_the_middle():
    weights = importance_map((9, 9, 9), "gaussian")
    assert weights[4, 4, 4] == 1.0
    assert weights[0, 0, 0] < weights[2, 2, 2] < weights[4, 4, 4]
    np.testing.assert_allclose(weights, weights[::-1, ::-1, ::-1])
    assert np.all(importance_map((4, 5, 6), "constant") == 1.0)
    with pytest.raises(ConfigError, match="blending"):
        importance_map((4, 4, 4), "linear")


@settings(max_examples=max(settings().max_examples, 300))
@given(size=st.integers(1, 300), roi=st.integers(1, 64), overlap=st.floats(0.0, 0.9))
def test_window_starts_spread_evenly_and_touch_both_edges(size, roi, overlap):
    starts = axis_starts(size, roi, overlap)
    assert starts[0] == 0
    if size <= roi:
        assert starts == (0,)
        return
    assert starts[-1] == size - roi                    # the last window ends at the far edge
    steps = np.diff(starts)
    assert steps.min() >= 1 and steps.max() - steps.min() <= 1   # even spread
    assert steps.max() <= max(1, math.ceil(roi * (1.0 - overlap)))  # at least the asked overlap (± rounding)
    assert steps.max() <= roi                             # no gaps


def test_window_starts_examples():
    assert axis_starts(10, 4, 0.0) == (0, 3, 6)  # 3 windows spread evenly, not (0, 4, 6)
    assert axis_starts(181, 160, 0.5) == (0, 21)
    assert axis_starts(217, 160, 0.5) == (0, 57)
    assert axis_starts(8, 4, 0.5) == (0, 2, 4)
    assert axis_starts(3, 8, 0.5) == (0,)


@pytest.mark.parametrize("in_flight", [1, 3])
def test_blendings_agree_on_a_linear_translation_invariant_model(in_flight):
    image = np.random.default_rng(0).normal(size=(1, 23, 17, 30)).astype(np.float32)
    model = FunctionPredictor(lambda batch: np.concatenate([batch * 2.0 + 1.0, -batch], axis=1))
    outs = {blending: sliding_window(image, model, (8, 9, 10), overlap=0.5, blending=blending, batch_size=2,
                                     in_flight=in_flight) for blending in ("constant", "gaussian")}
    np.testing.assert_allclose(outs["constant"], outs["gaussian"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["gaussian"][0], image[0] * 2.0 + 1.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["gaussian"][1], -image[0], rtol=1e-5, atol=1e-5)


def test_blendings_differ_on_a_position_dependent_model():
    # a model that sees where it is in the window: blending then matters (the test above can fail)
    def fn(batch):
        ramp = np.linspace(0.0, 1.0, batch.shape[2], dtype=np.float32)[None, None, :, None, None]
        return batch * 0 + ramp
    image = np.zeros((1, 20, 6, 6), np.float32)
    model = FunctionPredictor(fn)
    constant = sliding_window(image, model, (8, 6, 6), overlap=0.5, blending="constant")
    gaussian = sliding_window(image, model, (8, 6, 6), overlap=0.5, blending="gaussian")
    assert not np.allclose(constant, gaussian)


@pytest.mark.parametrize("in_flight", [1, 3])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_progress_reaches_total(in_flight, batch_size):
    calls = []
    image = np.zeros((1, 20, 20, 20), np.float32)
    sliding_window(image, identity(), (8, 8, 8), overlap=0.25, batch_size=batch_size, in_flight=in_flight,
                   progress=lambda done, total: calls.append((done, total)))
    total = len(plan_windows((20, 20, 20), (8, 8, 8), 0.25))
    assert total == 27
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == total for _, t in calls)
    assert len(calls) == 1 + math.ceil(total / batch_size)


@pytest.mark.parametrize("in_flight", [1, 3])
def test_cancel_from_progress_stops_early(in_flight):
    token = CancelToken()
    calls = []
    lock = threading.Lock()

    def fn(batch):
        with lock:
            calls.append(len(batch))
        return batch

    def progress(done, total):
        if done >= 2:
            token.cancel()

    image = np.zeros((1, 30, 30, 30), np.float32)
    total = len(plan_windows(image.shape[1:], (8, 8, 8), 0.5))
    with pytest.raises(Cancelled):
        sliding_window(image, FunctionPredictor(fn), (8, 8, 8), overlap=0.5, batch_size=1, in_flight=in_flight,
                       progress=progress, cancel=token)
    assert total == 343
    assert 2 <= len(calls) <= 2 + in_flight   # at most the requests already in flight ran


def test_cancel_before_start():
    token = CancelToken()
    token.cancel()
    model = FunctionPredictor(lambda batch: pytest.fail("the model ran after cancel"))
    with pytest.raises(Cancelled):
        sliding_window(np.zeros((1, 8, 8, 8), np.float32), model, (4, 4, 4), cancel=token)


@pytest.mark.parametrize("in_flight", [1, 3])
@pytest.mark.parametrize("bad", [
    lambda batch: batch[:, :, :-1],                  # a spatial axis one short
    lambda batch: batch[:1],                         # fewer items than windows sent
    lambda batch: batch[:, 0],                       # no channel axis
    lambda batch: np.concatenate([batch, batch]),    # more items than sent
])
def test_wrong_model_output_shape_is_a_mismatch(in_flight, bad):
    with pytest.raises(ModelMismatchError, match=r"must return \[N, C, 6, 6, 6\]"):
        sliding_window(np.zeros((1, 10, 10, 10), np.float32), FunctionPredictor(bad), (6, 6, 6), batch_size=2,
                       in_flight=in_flight)


def test_batch_size_limits():
    seen = []
    no_batch = FunctionPredictor(lambda batch: seen.append(len(batch)) or batch, max_batch_size=0)
    sliding_window(np.zeros((1, 8, 8, 8), np.float32), no_batch, (4, 4, 4), batch_size=4)
    assert set(seen) == {1}
    with pytest.raises(ModelMismatchError, match="max_batch_size 2"):
        sliding_window(np.zeros((1, 8, 8, 8), np.float32), FunctionPredictor(lambda b: b, max_batch_size=2),
                       (4, 4, 4), batch_size=3)
    with pytest.raises(ConfigError):
        sliding_window(np.zeros((1, 8, 8, 8), np.float32), identity(), (4, 4, 4), batch_size=0)


@pytest.mark.parametrize("roi, overlap", [((4, 4), 0.25), ((4, 0, 4), 0.25), ((4, 4, 4), 1.0), ((4, 4, 4), -0.1)])
def test_bad_plans_are_config_errors(roi, overlap):
    with pytest.raises(ConfigError):
        plan_windows((8, 8, 8), roi, overlap)


def test_small_volume_is_padded_with_pad_value_and_cropped():
    seen = []

    def fn(batch):
        seen.append(batch.copy())
        return batch

    image = np.ones((1, 3, 10, 5), np.float32)
    out = sliding_window(image, FunctionPredictor(fn), (8, 8, 8), overlap=0.5, pad_value=-1.0)
    np.testing.assert_array_equal(out, image)
    first = seen[0]
    assert first.shape[2:] == (8, 8, 8)
    assert (first == -1.0).any() and first.max() == 1.0
    # the volume sits in the middle of the padded window (padding split before/after)
    plan = plan_windows((3, 10, 5), (8, 8, 8), 0.5)
    assert plan.pad[0] == (2, 3) and plan.pad[2] == (1, 2) and plan.pad[1] == (0, 0)
