"""Agreement between label volumes: Dice per label and volumes in millilitres."""
from __future__ import annotations

import numpy as np

from .errors import VolumeError
from .volume import Volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_to_reference(result: Volume, reference: Volume) -> dict[str, float | bool]:
    """Foreground Dice and volumes of ``result`` against ``reference`` on the same grid."""
    if result.array.shape != reference.array.shape:
        raise VolumeError(f"{result.path or 'result'} ({result.array.shape}) and {reference.path or 'reference'} "
                          f"({reference.array.shape}) are not on the same grid.")
    a, b = result.array > 0, reference.array > 0
    return {"dice": dice(a, b), "same_grid": result.same_grid(reference),
            "volume_ml": result.physical_volume_ml(a), "reference_ml": reference.physical_volume_ml(b)}
