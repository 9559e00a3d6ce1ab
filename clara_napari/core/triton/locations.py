"""Where the embedded server's parts are: the ``tritonserver`` binary of the nvidia-pytriton wheel,
this environment's packages (for the python-backend stub), and free loopback ports."""
from __future__ import annotations

import contextlib
import site
import socket
import sys
from pathlib import Path

from ..errors import ServerError

#: the folder holding the ``clara_napari`` package (the model program imports it from there)
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def embedded_server_missing() -> str | None:
    """Why the embedded server cannot run here (one sentence), or ``None`` when it can."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        return ("the embedded Triton server is not installed (pip install 'clara-napari[server]'; "
                "Linux x86-64/aarch64 with glibc >= 2.35 only)")
    return None


def tritonserver_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerError("the embedded server needs the nvidia-pytriton package (pip install nvidia-pytriton).") from None
    folder = Path(pytriton.__file__).parent / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise ServerError(f"{folder}: the nvidia-pytriton wheel has no tritonserver binary (unsupported platform?).")
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def python_paths() -> list[str]:
    """Where this environment's packages are, for the stub's ``sys.path``."""
    paths = list(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        paths.append(site.getusersitepackages())
    paths += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return list(dict.fromkeys([*paths, str(PROJECT_ROOT)]))


def model_program_paths() -> list[str]:
    """``sys.path`` entries for the model program: this project's folder first, then the packages."""
    return list(dict.fromkeys([str(PROJECT_ROOT), *python_paths()]))

