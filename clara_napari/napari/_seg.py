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
from ..core.label_table import LabelTable
from ._geometry import volume_to_layer
from ._labels import label_colormap


def lab_to_hex(lab: tuple[int, int, int] | None) -> str:
    """A DICOM CIELab triplet (0..65535 each) → ``#rrggbb`` (white when absent)."""
    if lab is None:
        return "#ffffff"
    from highdicom.color import CIELabColor

    r, g, b = CIELabColor.from_dicom_value(list(lab)).to_rgb()
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def seg_layer_data(path: str | Path) -> tuple[Any, dict[str, Any], str]:
    seg = read_seg(Path(path))
    table = LabelTable.from_pairs({s.number: (s.label, lab_to_hex(s.color_lab)) for s in seg.segments})
    extra = {"dicom_seg": str(path), "referenced_series": seg.referenced_series, "labels": table.record()}
    data, kwargs = volume_to_layer(seg.labels, name=Path(path).name.removesuffix(".dcm"), kind="labels", **extra)
    features = table.features()
    kwargs["features"] = {"index": np.array(features["index"]), "name": features["name"]}
    kwargs["colormap"] = label_colormap(table)
    kwargs["opacity"] = 0.5
    return data, kwargs, "labels"
