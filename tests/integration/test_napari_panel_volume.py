"""The panel's Qt-free logic (clara_napari/napari/_panel.py): server choice as the CLI makes it, a refused
connection reported at once, result naming, undoable replacement, measurements; and the API's probabilities.

Here: the API's probabilities on a whole volume (slow); the panel logic is in tests/unit/test_napari_panel.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import brain_app, crop_volume


@pytest.mark.slow
def test_api_probabilities_on_the_input_grid(tmp_path, mr_t1_path):
    """``run_app(..., probabilities=True).probabilities``: the foreground score on the input's grid."""
    from clara_napari.api import run_app
    from clara_napari.core.volume import read_volume

    from helpers import assert_same_geometry

    volume = crop_volume(read_volume(mr_t1_path), (90, 110, 88), (96, 96, 96))
    app = brain_app(tmp_path / "app96", roi_size=[96, 96, 96])
    result = run_app(volume, app, server="local", probabilities=True)
    scores = result.probabilities
    assert scores is not None and scores.array.dtype == np.float32 and scores.array.shape == volume.array.shape
    assert_same_geometry(scores, volume)
    assert np.isfinite(scores.array).all()
    inside = result.labels.array > 0
    assert 0 < inside.sum() < inside.size
    assert scores.array[inside].mean() > scores.array[~inside].mean()
    assert run_app(volume, app, server="local").probabilities is None       # only when asked
