"""Medical correctness of the bundled apps (issue 15): the right resolution, plausibility checks
that refuse to be silently wrong, checked in-memory volumes, test-time augmentation and a second
brain. Everything runs the real deepbet ONNX model in process (``server="local"``) on real MRI/CT.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn
from clara_napari.core.apps import resolve_app
from clara_napari.core.volume import Volume, read_volume

from conftest import assert_same_geometry, dice


@pytest.fixture(scope="module")
def t1(mr_t1_path) -> Volume:
    return read_volume(mr_t1_path)


@pytest.fixture(scope="module")
def t1_mask(brain_mask_path) -> Volume:
    return read_volume(brain_mask_path)


@pytest.fixture(scope="module")
def brain_app(model_repository):
    return resolve_app("brain_extraction_t1")


def resample_to(volume: Volume, spacing, *, is_label: bool) -> Volume:
    """``volume`` on a grid of ``spacing`` mm over the same extent (same origin and direction).

    Images: linear interpolation; masks: linear interpolation of the 0/1 mask thresholded at
    0.5 (a partial-volume reference, not nearest neighbour's staircase).
    """
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    size = [int(round(n * old / new)) for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), tuple(spacing),
                        image.GetDirection(), 0.0, sitk.sitkFloat32)
    if is_label:
        out = sitk.Cast(out > 0.5, sitk.sitkUInt8)
    return Volume.from_sitk(out)


# -- 1. the brain app works at deepbet's training resolution ----------------------------------
#: Dice without resampling to 1 mm (measured before the fix): 0.5 mm 0.877, 0.7 mm 0.878,
#: 1.5 mm 0.622, 1x1x3 mm 0.600; with it all are 0.93-0.94 (figures in the brain app's README)
SPACINGS = [(0.5, 0.5, 0.5), (0.7, 0.7, 0.7), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (1.0, 1.0, 3.0)]


@pytest.mark.slow
@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: "x".join(f"{v:g}" for v in s))
def test_brain_app_dice_at_other_resolutions(t1, t1_mask, brain_app, spacing):
    volume = resample_to(t1, spacing, is_label=False)
    reference = resample_to(t1_mask, spacing, is_label=True)
    start = time.perf_counter()
    labels = cn.segment(volume, app=brain_app, server="local")
    seconds = time.perf_counter() - start
    assert_same_geometry(labels, volume)
    assert labels.array.shape == volume.array.shape and labels.array.dtype == np.uint8
    score = dice(labels.array, reference.array)
    ml, ref_ml = labels.physical_volume_ml(), reference.physical_volume_ml()
    print(f"spacing {spacing}: size {volume.size}, Dice {score:.4f}, brain {ml:.0f} ml "
          f"(reference {ref_ml:.0f} ml), {seconds:.1f} s")
    assert score >= 0.92
    assert abs(ml - ref_ml) <= 0.20 * ref_ml   # the network labels ~12 % more than the reference at 1 mm
