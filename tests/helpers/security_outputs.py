"""Shared by unit/test_security_outputs.py and integration/test_security_outputs_processes.py (definitions both use)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.core.apps import DATA_ROOT

ROOT = Path(__file__).resolve().parents[2]


CT = DATA_ROOT / "sample_data/chest_ct/chest_ct_lung2.nii.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def hidden(folder: Path) -> list[Path]:
    return list(folder.rglob(".*")) if folder.exists() else []


@pytest.fixture(scope="module")
def ct():
    return cn.read_volume(CT)


def crop(ct, i: int):
    """A small real CT crop; ``i`` shifts it (a different origin and content per input)."""
    origin = tuple(ct.origin[:2]) + (ct.origin[2] + i * ct.spacing[2],)  # identity direction: z moves by slices
    return ct.with_array(np.ascontiguousarray(ct.array[20 + i:28 + i, ::4, ::4]), path=None, origin=origin)


def write_inputs(folder: Path, ct, names: list[str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: cn.write_volume(crop(ct, i), folder / f"{name}.nii.gz") for i, name in enumerate(names)}


def run_args(tmp_path: Path, inputs: Path, *extra: str, publish: bool = True) -> list[str]:
    args = ["run", "--app", "lung_ct", "--server", "local", "--input", str(inputs), "--output", str(tmp_path / "out"),
            "--logs", str(tmp_path / "logs")]
    return args + (["--publish", str(tmp_path / "pub")] if publish else ["--no-publish"]) + list(extra)


# -- item 2: an app folder names no code -------------------------------------------------------------
HOSTILE_LOGGING = [
    ({"version": 1, "handlers": {"h": {"()": "subprocess.getoutput", "cmd": "touch {marker}"}},
      "root": {"handlers": ["h"]}}, "handlers.h.()"),
    ({"version": 1, "formatters": {"f": {"()": "subprocess.getoutput", "cmd": "touch {marker}"}}}, "formatters.f.()"),
    ({"version": 1, "formatters": {"f": {"class": "subprocess.Popen", "format": "x"}}}, "formatters.f.class"),
    ({"version": 1, "handlers": {"h": {"class": "subprocess.Popen"}}}, "handlers.h.class"),
    ({"version": 1, "handlers": {"h": {"class": "logging.handlers.SocketHandler"}}},
     "handlers.h.class"),
    ({"version": 1, "handlers": {"h": {"class": "logging.StreamHandler", "stream": "ext://os.system"}}},
     "handlers.h.stream"),
    ({"version": 1, "handlers": {"h": {"class": "logging.StreamHandler", ".": {"x": "cfg://handlers"}}}},
     "handlers.h.."),
    ({"version": 1, "filters": {"x": {"()": "subprocess.getoutput", "cmd": "touch {marker}"}}}, "filters"),
    ({"version": 1, "handlers": {"h": {"class": "logging.StreamHandler", "filters": ["x"]}}}, "handlers.h.filters"),
    ({"version": 1, "loggers": {"x": {"level": "INFO", "filters": ["x"]}}}, "loggers.x.filters"),
    ({"version": 1, "root": {"level": "ext://subprocess.getoutput"}}, "root.level"),
    ({"version": 1, "formatters": {"f": {"format": "{msg.__class__.__init__.__globals__}", "style": "{"}}},
     "formatters.f.format"),
    ({"version": 1, "handlers": {"h": {"class": "logging.FileHandler", "filename": "/etc/cron.d/x"}}},
     "handlers.h.filename"),
    ({"version": 1, "handlers": {"h": {"class": "logging.FileHandler", "filename": "../outside.log"}}},
     "handlers.h.filename"),
    ({"version": 1, "incremental": True}, "incremental"),
    ({"version": 1, "handlers": {"h": {"class": "logging.StreamHandler", "level": "INFO"}},
      "root": {"handlers": ["nope"]}}, "root.handlers[0]"),
    ([1, 2], ""),
]


# -- item 12: stale partials, one volume's outputs land together ------------------------------------------------
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from clara_napari.core.atomic import Transaction
    txn = Transaction(overwrite=False)
    txn.path(Path(sys.argv[1]) / "ct.raw").write_bytes(b"half of the data")
    txn.path(Path(sys.argv[2]) / "ct.mhd").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
""")


PYTHON_MODEL_CONFIG = '''
name: "lung_air_density"
backend: "python"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2, -1, -1, -1 ] } ]
'''


KILLED_COMMIT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import clara_napari.core.atomic as atomic
    out, pub = Path(sys.argv[1]), Path(sys.argv[2])
    placed = []
    real_place = atomic._place
    def place_then_die(src, target, overwrite, backup):
        if len(placed) == 2:  # the output is in place, the bundle is not
            os.kill(os.getpid(), signal.SIGKILL)
        placed.append(target)
        return real_place(src, target, overwrite, backup)
    atomic._place = place_then_die
    txn = atomic.Transaction(overwrite=False)
    txn.path(out / "ct.raw").write_bytes(b"voxels")
    txn.path(out / "ct.nhdr").write_text("header")
    txn.path(pub / "ct.raw").write_bytes(b"density")
    txn.path(pub / "config.meta").write_text("meta")
    txn.commit()
""")
