"""Dice and geometry check of a label volume against a reference mask: ``python scripts/dice.py OUT REF``."""
import sys

import numpy as np

from clara_napari.core.volume import read_volume

out, ref = read_volume(sys.argv[1]), read_volume(sys.argv[2])
a, b = out.array > 0, ref.array > 0
dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
print(f"dice {dice:.4f}  geometry identical: {out.same_grid(ref)}  "
      f"volume {out.physical_volume_ml():.1f} ml vs reference {ref.physical_volume_ml():.1f} ml")
