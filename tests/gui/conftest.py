"""Fixtures of the GUI lane (tests/gui/): widget settings in a temporary folder, a small T1 crop with apps."""
from __future__ import annotations

import pytest

from clara_napari.core.volume import read_volume, write_volume

from helpers import bundled_config, crop_volume, write_app


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    """Widget settings go to a temporary folder, never the user's."""
    folder = tmp_path / "settings"
    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def crop(tmp_path_factory, mr_t1_path, brain_mask_path, model_repository):
    """A 96³ crop of the T1 sample (and of its reference brain mask) as files, plus apps with small windows."""
    folder = tmp_path_factory.mktemp("widget")
    centre, size = (90, 110, 88), (96, 96, 96)
    image = crop_volume(read_volume(mr_t1_path), centre, size)
    mask = crop_volume(read_volume(brain_mask_path), centre, size)
    path = write_volume(image, folder / "t1_crop.nii.gz")
    config = bundled_config()
    config["inferer"]["args"].update(roi_size=[96, 96, 96])
    quick = write_app(folder / "brain_96", config) / "config_inference.json"
    config = bundled_config()
    config["inferer"]["args"].update(roi_size=[64, 64, 64], overlap=0.75)
    many = write_app(folder / "brain_many_windows", config) / "config_inference.json"
    return {"path": path, "mask": mask, "quick_app": quick, "many_windows_app": many}
