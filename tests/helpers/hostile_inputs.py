"""Tools of the hostile-input tests (tests/unit/test_malformed.py, tests/unit/test_security_inputs.py).

MetaImage headers written by hand, a digest of a folder (to prove nothing changed), a check that
nothing was written, and real permission tests: the CLI run as root without the capabilities that
let root ignore file permissions, in a world-writable temporary folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

#: the app the hostile inputs are run through
APP = "lung_ct"


def write_mhd_header(path: Path, **fields) -> None:
    values = {"ObjectType": "Image", "NDims": "3", "DimSize": "40 40 12", "ElementType": "MET_SHORT",
              "ElementSpacing": "1 1 1", "ElementDataFile": path.with_suffix(".raw").name}
    values.update({k: str(v) for k, v in fields.items()})
    order = ["ObjectType", "NDims", "DimSize", "ElementType", "ElementSpacing", "ElementNumberOfChannels",
             "CompressedData", "ElementDataFile"]
    path.write_text("".join(f"{k} = {values[k]}\n" for k in order if k in values))


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


def assert_nothing_written(*folders: Path) -> None:
    for folder in folders:
        if folder.exists():
            assert not [p for p in folder.rglob("*") if p.is_file()], f"{folder} got files"


@contextlib.contextmanager
def shared_tmp():
    folder = Path(tempfile.mkdtemp(prefix="clara-napari-perm-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_without_dac_override(args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI as root without the capabilities that let root ignore file permissions."""
    def drop():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "clara_napari", *args], capture_output=True, text=True, timeout=180,
                          preexec_fn=drop, env=env)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drops root's permission override; needs root")
