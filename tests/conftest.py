"""Shared fixtures of the three test lanes, and the markers each lane gets from its folder.

- ``tests/unit/``: no Triton server, no display, no PACS, no wheel build; fast (`make test-fast`).
  Marked ``unit``; 60 s per test by default; a test there marked ``triton``, ``gui`` or ``wheel``
  is a collection error, and one that starts ``tritonserver`` fails (it belongs in integration/).
- ``tests/integration/``: real Triton, real PACS, the CLI in processes, Dask, wheels. Marked ``integration``.
- ``tests/gui/``: a real napari viewer (Xvfb). Marked ``gui``.

Helpers the tests import live in ``tests/helpers/`` (``from helpers import make_volume``).
Everything here builds real objects; nothing stands in for a part of clara_napari.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from clara_napari.core.apps import sample_data_dir

# Hypothesis: no per-example deadline (the first example pays for imports and SimpleITK's
# start-up), a bounded number of examples so the whole suite stays well under a minute.
settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# fixtures that tests of two lanes share (a file split between unit/ and integration/)
pytest_plugins = ["helpers.dicom_seg", "helpers.local_pipeline", "helpers.medical", "helpers.security_outputs",
                  "helpers.security_server"]

LANES = ("unit", "integration", "gui")
UNIT_TIMEOUT_S = 60
NOT_IN_UNIT = ("triton", "gui", "wheel")


def pytest_collection_modifyitems(config, items):
    """Markers from the folder: unit/integration/gui (and ``gui`` for everything in tests/gui/)."""
    tests_root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(tests_root).parts if item.path.is_relative_to(tests_root) else ()
        lane = parts[0] if len(parts) > 1 and parts[0] in LANES else None
        if lane is None:
            continue
        item.add_marker(lane)
        if lane == "unit":
            wrong = [name for name in NOT_IN_UNIT if item.get_closest_marker(name)]
            if wrong:
                raise pytest.UsageError(f"{item.nodeid} is marked {', '.join(wrong)}: it belongs in tests/integration/ "
                                        "or tests/gui/, not tests/unit/.")
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


class _UnitLanePopen(subprocess.Popen):
    """``subprocess.Popen`` that refuses to start ``tritonserver`` (installed for tests/unit/ only)."""

    def __init__(self, args, *rest, **kwargs):
        program = args if isinstance(args, (str, bytes, os.PathLike)) else (args[0] if args else "")
        if Path(os.fsdecode(program)).name == "tritonserver":
            pytest.fail("a unit test started tritonserver: move it to tests/integration/ and mark it triton",
                        pytrace=False)
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _unit_lane_starts_no_triton(request, monkeypatch):
    if request.node.get_closest_marker("unit") is not None:
        monkeypatch.setattr(subprocess, "Popen", _UnitLanePopen)
    yield


# -- sample data -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sample_dir() -> Path:
    folder = sample_data_dir()
    if not (folder / "mr_t1" / "mr_t1_colin27.nii.gz").is_file():
        pytest.skip(f"sample data missing under {folder}")
    return folder


@pytest.fixture(scope="session")
def mr_t1_path(sample_dir) -> Path:
    return sample_dir / "mr_t1" / "mr_t1_colin27.nii.gz"


@pytest.fixture(scope="session")
def brain_mask_path(sample_dir) -> Path:
    return sample_dir / "reference" / "mr_t1_colin27_brain_mask.nii.gz"


@pytest.fixture(scope="session")
def chest_ct_path(sample_dir) -> Path:
    return sample_dir / "chest_ct" / "chest_ct_lung2.nii.gz"


@pytest.fixture(scope="session")
def model_repository(sample_dir) -> Path:
    repo = sample_dir / "models"
    if not (repo / "deepbet_brain_t1" / "1" / "model.onnx").is_file():
        pytest.skip("the bundled deepbet ONNX model is missing")
    return repo


@pytest.fixture
def restore_root_logging():
    """Undo the handlers and level the CLI adds to the root logger (it logs to --logs files)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
