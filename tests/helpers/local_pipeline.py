"""Shared by unit/test_local_pipeline.py and integration/test_local_pipeline_volume.py (definitions both use)."""
from __future__ import annotations

import pytest

from clara_napari.cli import main
from clara_napari.core.volume import Volume, read_volume

CROP = 96


@pytest.fixture(scope="module")
def brain_mask(brain_mask_path) -> Volume:
    return read_volume(brain_mask_path)


def cli_run(app, folders, *extra) -> int:
    return main(["run", "--server", "local", "--app", str(app), "--input", str(folders["input"]),
                 "--output", str(folders["output"]), "--no-publish", "--logs", str(folders["logs"]), *extra])
