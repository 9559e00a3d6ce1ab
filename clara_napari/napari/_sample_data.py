"""Sample data: the bundled T1 MRI (Colin27) and chest CT, with their physical geometry."""
from __future__ import annotations

from ..core.apps import sample_data_dir
from ..core.errors import VolumeError
from ..core.volume import read_volume
from ._reader import LayerData, image_layer_data


def _sample(relative: str) -> list[LayerData]:
    path = sample_data_dir() / relative
    if not path.is_file():
        raise VolumeError(f"{path}: the bundled sample is missing (is sample_data installed?).")
    return [image_layer_data(read_volume(path))]


def mr_t1() -> list[LayerData]:
    """The Colin27 T1 MRI, 181 x 217 x 181 voxels of 1 mm."""
    return _sample("mr_t1/mr_t1_colin27.nii.gz")


def chest_ct() -> list[LayerData]:
    """A chest CT, 512 x 512 x 61 voxels of 0.63 x 0.63 x 5 mm."""
    data = _sample("chest_ct/chest_ct_lung2.nii.gz")
    image, kwargs, kind = data[0]
    kwargs["contrast_limits"] = (-1000.0, 600.0)   # a lung/soft-tissue window
    return [(image, kwargs, kind)]
