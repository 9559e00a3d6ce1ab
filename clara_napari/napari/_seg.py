"""A DICOM SEG file → a napari Labels layer, aligned with its source series in world coordinates.

The frames are placed by their plane positions (:func:`clara_napari.core.dicom.seg.read_seg`), so
the layer has the geometry of the source slices it was made on and lands on the series' Image
layer in LPS millimetres. Segment numbers are the label values; names come from the segments'
labels and colours from their recommended display CIELab values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.dicom.seg import read_seg
from ._geometry import volume_to_layer


def lab_to_hex(lab: tuple[int, int, int] | None) -> str:
    """A DICOM CIELab triplet (0..65535 each) → ``#rrggbb`` (white when absent)."""
    if lab is None:
        return "#ffffff"
    from highdicom.color import CIELabColor

    r, g, b = CIELabColor.from_dicom_value(list(lab)).to_rgb()
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def seg_layer_data(path: str | Path) -> tuple[Any, dict[str, Any], str]:
    from napari.utils.colormaps import DirectLabelColormap

    seg = read_seg(Path(path))
    names = {s.number: s.label for s in seg.segments}
    colors = {s.number: lab_to_hex(s.color_lab) for s in seg.segments}
    extra = {"dicom_seg": str(path), "referenced_series": seg.referenced_series,
             "labels": {str(n): [names[n], colors[n]] for n in names}}
    data, kwargs = volume_to_layer(seg.labels, name=Path(path).name.removesuffix(".dcm"), kind="labels", **extra)
    values = sorted(names)
    kwargs["features"] = {"index": np.array([0] + values), "name": ["background"] + [names[v] for v in values]}
    table: dict[int | None, Any] = {0: np.zeros(4), None: np.ones(4)}
    for value, color in colors.items():
        table[value] = np.array([int(color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)] + [1.0])
    kwargs["colormap"] = DirectLabelColormap(color_dict=table)
    kwargs["opacity"] = 0.5
    return data, kwargs, "labels"
