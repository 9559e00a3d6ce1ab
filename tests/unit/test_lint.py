"""ruff (the napari-plugin-template's rule set, blind-except included) and mypy on ``clara_napari/core``.

Both read their settings from pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``) and run as they would
by hand or in pre-commit; a violation fails the test with the tool's own report. mypy keeps its
incremental cache in ``.mypy_cache`` at the repository root (the first run on a fresh clone takes
about 25 s of CPU, later runs about 2 s).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff is in the `testing` extra")
    done = _run("ruff", "check", "--no-cache", "--output-format", "concise", "clara_napari", "tests", timeout=120)
    assert done.returncode == 0, f"ruff check clara_napari tests:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(300)
def test_mypy_core_is_clean():
    pytest.importorskip("mypy", reason="mypy is in the `testing` extra")
    done = _run("mypy", "clara_napari/core", timeout=280)
    assert done.returncode == 0, f"mypy clara_napari/core:\n{done.stdout}{done.stderr}"


def test_every_test_file_is_in_a_lane():
    """New tests go into tests/unit, tests/integration or tests/gui (the folder gives the marker)."""
    stray = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    assert not stray, f"test files outside the lanes (move them to tests/unit, integration or gui): {stray}"
