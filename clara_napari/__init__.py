"""clara-napari: Clara Deploy style scanning-window inference on Triton, for napari, notebooks and pipelines.

The top-level names load lazily so that ``import clara_napari`` stays light (no onnxruntime,
tritonclient or napari until they are used).
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "segment": "api", "run_app": "api", "read_volume": "api", "write_volume": "api", "Volume": "api",
    "show": "notebook", "add_to_viewer": "notebook", "sample_path": "core.apps",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'clara_napari' has no attribute {name!r}")
