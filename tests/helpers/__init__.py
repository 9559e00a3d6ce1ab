"""Helpers the tests import (``from helpers import make_volume``): real objects only.

Volumes written with SimpleITK, configs written as JSON, the bundled app and model; nothing here
stands in for a part of clara_napari except :class:`FunctionModel`, a model handle backed by a
plain function for pipeline tests that do not test the network. ``tests/`` is on ``sys.path``
through ``pythonpath`` in pyproject.toml; fixtures stay in ``tests/conftest.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.model_repository import ModelSpec, TensorSpec
from clara_napari.core.volume import Volume

BUNDLED_APP = DATA_ROOT / "config" / "brain_extraction_t1"


# -- synthetic volumes -----------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation (det +1) from the QR decomposition of a gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_volume(shape=(6, 7, 8), *, dtype=np.int16, spacing=(0.75, 0.8, 2.5), origin=(-12.5, 30.25, 101.125),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), seed: int = 0) -> Volume:
    """A small volume with distinct voxel values (z, y, x array) and the given geometry."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.floating):
        array = rng.normal(100.0, 30.0, size=shape).astype(dtype)
    else:
        array = rng.integers(0, 1000, size=shape).astype(dtype)
    return Volume(array, spacing=spacing, origin=origin, direction=tuple(np.asarray(direction, float).ravel()))


def oblique_volume(seed: int = 7, shape=(5, 6, 7), dtype=np.float32) -> Volume:
    """A volume with a random rotation and odd float spacing/origin (none of them round numbers)."""
    rng = np.random.default_rng(seed)
    return make_volume(shape, dtype=dtype, spacing=tuple(rng.uniform(0.3, 3.7, 3)),
                       origin=tuple(rng.uniform(-250.0, 250.0, 3)), direction=random_rotation(rng).ravel(), seed=seed)


def assert_same_geometry(a: Volume, b: Volume) -> None:
    """Exact (bit for bit) equality of size, spacing, origin and direction."""
    assert a.size == b.size
    assert a.spacing == b.spacing
    assert a.origin == b.origin
    assert a.direction == b.direction


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def crop_volume(volume: Volume, centre_xyz, size_xyz) -> Volume:
    """A crop with SimpleITK (keeps spacing/direction, moves the origin to the first voxel kept)."""
    image = volume.to_sitk()
    lo = [c - s // 2 for c, s in zip(centre_xyz, size_xyz, strict=True)]
    hi = [a + s for a, s in zip(lo, size_xyz, strict=True)]
    return Volume.from_sitk(image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])


# -- configs and apps ------------------------------------------------------------------------
def bundled_config() -> dict:
    return json.loads((BUNDLED_APP / "config_inference.json").read_text())


def write_app(folder: Path, config: dict) -> Path:
    """An app folder holding ``config`` (its model repository is the bundled one)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config_inference.json").write_text(json.dumps(config, indent=2))
    return folder


def brain_app(folder: Path, **inferer_args):
    """The bundled brain app with other inferer args (e.g. a smaller ``roi_size``), as an App."""
    from clara_napari.core.apps import resolve_app

    config = bundled_config()
    config["inferer"]["args"].update(inferer_args)
    return resolve_app(write_app(folder, config))


def t1_crop(z: slice, y: slice, x: slice) -> Volume:
    """A crop of the real T1 MRI, keeping its geometry (as the pipeline sees any volume)."""
    from clara_napari.core.volume import read_volume

    full = read_volume(DATA_ROOT / "sample_data/mr_t1/mr_t1_colin27.nii.gz")
    return full.with_array(np.ascontiguousarray(full.array[z, y, x]))


# -- a model handle backed by a plain function (for pipeline tests that do not test the network) --
class FunctionModel:
    """A :class:`~clara_napari.core.backends.base.ModelHandle` that runs ``fn`` on each batch."""

    def __init__(self, fn, in_channels: int = 1, out_channels: int = 2, max_batch_size: int = 8) -> None:
        self.fn = fn
        self.input = TensorSpec("x", "FP32", (in_channels, -1, -1, -1))
        self.output = TensorSpec("y", "FP32", (out_channels, -1, -1, -1))
        self.spec = ModelSpec("function_model", "onnxruntime_onnx", "", max_batch_size, (self.input,), (self.output,))
        self.max_batch_size = max_batch_size
        self.description = "function model (tests)"
        self.calls = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.fn(batch)

    def close(self) -> None:
        pass


def threshold_model(threshold: float) -> FunctionModel:
    """Two-channel 'probabilities': channel 1 is 1 where the input is above ``threshold``."""
    def fn(batch):
        fg = (batch[:, :1] > threshold).astype(np.float32)
        return np.concatenate([1.0 - fg, fg], axis=1)
    return FunctionModel(fn)
