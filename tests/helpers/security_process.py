"""Shared by unit/test_security_process.py and integration/test_security_process_triton.py (definitions both use)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from clara_napari.core.volume import Volume

ROOT = Path(__file__).resolve().parents[2]


TINY = "tiny_seg"


def small_volume(seed: int, shape=(20, 20, 20)) -> Volume:
    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return Volume(array, spacing=(0.9, 1.1, 1.3), origin=(-3.5, 7.25, 11.0))


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clara_napari", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("NVIDIA_CLARA_TRTISURI", None)
    env.pop("CLARA_NAPARI_HEADERS", None)
    # the tiny app runs thousands of 16³ windows on the chest CT on purpose (a long run to interrupt)
    env["CLARA_NAPARI_MAX_WINDOWS"] = "20000"
    return env


# -- item 12: secrets are masked everywhere ------------------------------------------------------
SECRET = "S3cretT0ken-for-the-test"


def _run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout)


def _logs_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("*.log")) if folder.is_dir() else ""


SLOW_MODEL = '''
import sys
sys.path[:0] = {paths!r}
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep({delay})
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.concatenate([-x, x], axis=1))]))
        return out
'''
