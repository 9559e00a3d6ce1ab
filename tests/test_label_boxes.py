"""KeepLargestCC, FillHoles and RemoveBorderConnected work inside each label's bounding box: the same answers as before.

The reference is the former whole-volume implementation (``scipy.ndimage.label`` /
``binary_fill_holes`` on the full array, label by label), kept here verbatim. Real volumes (the T1
MRI and the chest CT cut into bands of intensity: many components, many holes) and random small
arrays in 3-D and 4-D with every connectivity must give identical arrays.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from clara_napari.core.transforms.labels import FillHoles, KeepLargestCC, RemoveBorderConnected
from clara_napari.core.volume import read_volume


def old_per_label(array, operation):
    out = np.zeros_like(array)
    for value in np.unique(array):
        if value == 0:
            continue
        out[operation(array == value)] = value
    return out


def old_keep_largest(array, structure, num_components=1, min_size_ratio=0.0):
    def largest(mask):
        labelled, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            return mask
        sizes = np.bincount(labelled.ravel())[1:]
        keep = np.argsort(sizes)[::-1][:num_components]
        keep = keep[sizes[keep] >= min_size_ratio * sizes.max()] + 1
        return np.isin(labelled, keep)

    return old_per_label(array, largest)


def old_fill_holes(array, structure):
    background = array == 0
    return old_per_label(array, lambda mask: ndimage.binary_fill_holes(mask, structure=structure) & (mask | background))


def old_remove_border(array, structure, include_z=False):
    def inner(mask):
        labelled, _ = ndimage.label(mask, structure=structure)
        sp = labelled if labelled.ndim == 3 else labelled[0]
        faces = [sp[0], sp[-1], sp[:, 0], sp[:, -1]]
        if include_z:
            faces += [sp[:, :, 0], sp[:, :, -1]]
        touching = np.unique(np.concatenate([f.ravel() for f in faces]))
        return mask & ~np.isin(labelled, touching[touching > 0])

    return old_per_label(array, inner)


def check(array: np.ndarray, connectivity: int, num_components: int = 1, ratio: float = 0.0) -> None:
    keep = KeepLargestCC(fields=["model"], connectivity=connectivity, num_components=num_components,
                         min_size_ratio=ratio)
    fill = FillHoles(fields=["model"], connectivity=connectivity)
    structure = keep.structure(array.ndim)
    np.testing.assert_array_equal(keep.apply(array), old_keep_largest(array, structure, num_components, ratio))
    np.testing.assert_array_equal(fill.apply(array), old_fill_holes(array, structure))
    for include_z in (False, True):
        border = RemoveBorderConnected(fields=["model"], connectivity=connectivity, include_z=include_z)
        np.testing.assert_array_equal(border.apply(array), old_remove_border(array, structure, include_z))


@pytest.fixture(scope="module")
def t1_bands(mr_t1_path) -> np.ndarray:
    """The T1 MRI in three intensity bands, channels first like a model's label map ``[1, X, Y, Z]``."""
    image = read_volume(mr_t1_path).array.astype(np.int16)
    bands = np.digitize(image, [40, 90, 140]).astype(np.uint8)  # 0 = dark, 1..3 = brighter bands
    return bands.transpose(2, 1, 0)[None].copy()


@pytest.mark.parametrize("connectivity", [1, 3])
def test_real_t1_bands_give_the_old_answers(t1_bands, connectivity):
    check(t1_bands, connectivity)


def test_real_t1_bands_keep_several_components(t1_bands):
    check(t1_bands[0], 1, num_components=3, ratio=0.01)


def test_real_chest_ct_air_gives_the_old_answers(chest_ct_path):
    air = (read_volume(chest_ct_path).array < -400).astype(np.uint8)
    check(air.transpose(2, 1, 0)[None].copy(), 1, num_components=2, ratio=0.1)


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


def test_channel_argmax_on_real_probabilities(t1_bands):
    from clara_napari.core.transforms.labels import channel_argmax

    scores = np.stack([t1_bands[0] == v for v in range(4)]).astype(np.float32) * 0.7 + 0.1
    np.testing.assert_array_equal(channel_argmax(scores), np.argmax(scores, axis=0))


@given(seed=st.integers(0, 2**31 - 1), connectivity=st.sampled_from([1, 3]))
def test_several_channels_give_the_old_answers(seed, connectivity):
    rng = np.random.default_rng(seed)
    shape = (2,) + tuple(int(s) for s in rng.integers(2, 7, size=3))
    array = np.where(rng.random(shape) < 0.5, rng.integers(1, 3, size=shape), 0).astype(np.uint8)
    array[0][array[0] == 2] = 0   # label 2 only in channel 1: its box starts at channel 1
    check(array, connectivity)
