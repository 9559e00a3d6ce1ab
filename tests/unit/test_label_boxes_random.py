"""KeepLargestCC, FillHoles and RemoveBorderConnected work inside each label's bounding box: the same answers as before.

The reference is the former whole-volume implementation (``scipy.ndimage.label`` /
``binary_fill_holes`` on the full array, label by label), kept here verbatim. Real volumes (the T1
MRI and the chest CT cut into bands of intensity: many components, many holes) and random small
arrays in 3-D and 4-D with every connectivity must give identical arrays.

Here: random label maps; the real T1/CT volumes are in tests/integration/test_label_boxes.py.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from helpers.label_boxes import check


@given(seed=st.integers(0, 2**31 - 1), connectivity=st.sampled_from([1, 2, 3]), four_d=st.booleans(),
       labels=st.integers(1, 3), density=st.floats(0.2, 0.8), dtype=st.sampled_from(["uint8", "uint16", "int16"]))
def test_random_label_maps_give_the_old_answers(seed, connectivity, four_d, labels, density, dtype):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 9, size=3))
    array = np.where(rng.random(shape) < density, rng.integers(1, labels + 1, size=shape), 0).astype(dtype)
    if four_d:
        array = array[None]
    check(array, connectivity, num_components=int(rng.integers(1, 3)))


@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 4), nans=st.booleans(), ties=st.booleans())
def test_channel_argmax_is_numpy_argmax(seed, channels, nans, ties):
    from clara_napari.core.transforms.labels import channel_argmax

    rng = np.random.default_rng(seed)
    array = rng.random((channels, 5, 4, 3)).astype(np.float32)
    if ties:
        array = np.round(array * 2) / 2
    if nans:
        array[rng.random(array.shape) < 0.2] = np.nan
    np.testing.assert_array_equal(channel_argmax(array), np.argmax(array, axis=0))


@given(seed=st.integers(0, 2**31 - 1), connectivity=st.sampled_from([1, 3]))
def test_several_channels_give_the_old_answers(seed, connectivity):
    rng = np.random.default_rng(seed)
    shape = (2,) + tuple(int(s) for s in rng.integers(2, 7, size=3))
    array = np.where(rng.random(shape) < 0.5, rng.integers(1, 3, size=shape), 0).astype(np.uint8)
    array[0][array[0] == 2] = 0   # label 2 only in channel 1: its box starts at channel 1
    check(array, connectivity)
