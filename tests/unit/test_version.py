"""The version is written once: ``__version__`` in clara_napari/__init__.py; everything else reads it."""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import clara_napari
from clara_napari.cli import main

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "clara_napari" / "__init__.py"
#: text files where a copy of the version could hide (package data, docs, build files, tests)
TEXT = {".py", ".cfg", ".toml", ".yaml", ".yml", ".json", ".md", ".txt", ".in", ".pbtxt", ".ipynb"}


def test_version_is_defined_once_in_the_package():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", clara_napari.__version__)
    assert "version = attr: clara_napari.__version__" in (ROOT / "setup.cfg").read_text()
    literal = re.compile(rf"(?<![\w.]){re.escape(clara_napari.__version__)}(?![\w.])")
    folders = [ROOT / "clara_napari", ROOT / "docs", ROOT / "tests", ROOT / "examples", ROOT / "scripts"]
    files = [ROOT / name for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "Makefile")]
    files += [p for folder in folders for p in folder.rglob("*") if p.suffix in TEXT and "data" not in p.parts]
    copies = [str(p.relative_to(ROOT)) for p in files
              if p.is_file() and p != SOURCE and literal.search(p.read_text(errors="replace"))]
    assert not copies, f"the version {clara_napari.__version__} is written again in {copies}"


def test_installed_metadata_matches():
    try:
        installed = version("clara-napari")
    except PackageNotFoundError:
        pytest.skip("clara-napari is not installed (running from a source tree)")
    assert installed == clara_napari.__version__


def test_cli_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"clara-napari {clara_napari.__version__}"
