"""Dice and geometry check of a label volume against a reference mask: ``python scripts/dice.py OUT REF``."""
import sys

from clara_napari.core.metrics import compare_to_reference
from clara_napari.core.volume import read_volume

row = compare_to_reference(read_volume(sys.argv[1]), read_volume(sys.argv[2]))
print(f"dice {row['dice']:.4f}  geometry identical: {row['same_grid']}  "
      f"volume {row['volume_ml']:.1f} ml vs reference {row['reference_ml']:.1f} ml")
