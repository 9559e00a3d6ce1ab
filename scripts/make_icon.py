"""The plugin icon (napari hub): a 256x256 axial slice of the bundled T1 with its brain overlay."""
from pathlib import Path

import numpy as np
from PIL import Image

from clara_napari.core.apps import sample_path
from clara_napari.core.volume import read_volume

t1 = read_volume(sample_path("mr_t1")).array.astype(np.float32)
mask = read_volume(sample_path("mr_t1_mask")).array > 0
z = t1.shape[0] // 2 + 10
grey = np.clip(t1[z] / np.percentile(t1[z], 99.5), 0, 1)[::-1]          # flip: anterior up
overlay = mask[z][::-1]
rgb = np.stack([grey] * 3, axis=-1)
colour = np.array([0.15, 0.75, 0.35])                                    # the brain label's green
rgb[overlay] = 0.55 * rgb[overlay] + 0.45 * colour
size = max(rgb.shape[:2])
square = np.zeros((size, size, 3), np.float32)
y0, x0 = (size - rgb.shape[0]) // 2, (size - rgb.shape[1]) // 2
square[y0:y0 + rgb.shape[0], x0:x0 + rgb.shape[1]] = rgb
image = Image.fromarray((square * 255).astype(np.uint8)).resize((256, 256), Image.LANCZOS)
out = Path(__file__).resolve().parents[1] / "clara_napari" / "resources" / "icon.png"
image.save(out, optimize=True)
print(out, out.stat().st_size, "bytes")
