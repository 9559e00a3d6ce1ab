"""Sample data: the bundled T1 MRI (Colin27) and chest CT, with their physical geometry."""
from __future__ import annotations

from ..core.apps import sample_path
from ..core.volume import read_volume
from ._reader import LayerData, image_layer_data


def mr_t1() -> list[LayerData]:
    """The Colin27 T1 MRI, 181 x 217 x 181 voxels of 1 mm."""
    return [image_layer_data(read_volume(sample_path("mr_t1")))]


def chest_ct() -> list[LayerData]:
    """A chest CT, 512 x 512 x 61 voxels of 0.63 x 0.63 x 5 mm."""
    image, kwargs, kind = image_layer_data(read_volume(sample_path("chest_ct")))
    kwargs["contrast_limits"] = (-1000.0, 600.0)   # a lung/soft-tissue window
    return [(image, kwargs, kind)]
