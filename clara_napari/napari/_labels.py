"""napari's side of the label table: a :class:`~clara_napari.core.label_table.LabelTable` as a colour map."""
from __future__ import annotations

import numpy as np

from ..core.label_table import LabelTable


def label_colormap(labels: LabelTable):
    """A napari ``DirectLabelColormap`` with the table's colours (0 transparent, other values white)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={value: np.array(rgba) for value, rgba in labels.color_dict().items()})
