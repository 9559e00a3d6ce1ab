"""Shared by integration/test_label_boxes.py and unit/test_label_boxes_random.py (definitions both use)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from clara_napari.core.transforms.labels import FillHoles, KeepLargestCC, RemoveBorderConnected


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
