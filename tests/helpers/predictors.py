"""Plain functions as :class:`~clara_napari.core.windows.Predictor` objects, for the engine's tests."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


class FunctionPredictor:
    """Wrap a plain function as a :class:`~clara_napari.core.windows.Predictor`."""

    def __init__(self, fn: PredictFn, max_batch_size: int = 64) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(batch)
