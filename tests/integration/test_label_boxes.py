"""KeepLargestCC, FillHoles and RemoveBorderConnected work inside each label's bounding box: the same answers as before.

The reference is the former whole-volume implementation (``scipy.ndimage.label`` /
``binary_fill_holes`` on the full array, label by label), kept here verbatim. Real volumes (the T1
MRI and the chest CT cut into bands of intensity: many components, many holes) and random small
arrays in 3-D and 4-D with every connectivity must give identical arrays.

Here: the real T1/CT volumes (seconds each); random label maps are in tests/unit/test_label_boxes_random.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from clara_napari.core.volume import read_volume

from helpers.label_boxes import check


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


def test_channel_argmax_on_real_probabilities(t1_bands):
    from clara_napari.core.transforms.labels import channel_argmax

    scores = np.stack([t1_bands[0] == v for v in range(4)]).astype(np.float32) * 0.7 + 0.1
    np.testing.assert_array_equal(channel_argmax(scores), np.argmax(scores, axis=0))
