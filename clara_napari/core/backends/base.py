"""What every backend gives the engine: a model handle that predicts batches."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..errors import ModelMismatchError
from ..model_repository import ModelSpec, TensorSpec


class ModelHandle(Protocol):
    """One model, ready to predict; also a :class:`~clara_napari.core.windows.Predictor`."""

    spec: ModelSpec
    input: TensorSpec
    output: TensorSpec
    max_batch_size: int
    description: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def pick_tensor(tensors: Sequence[TensorSpec], name: str, kind: str, where: str) -> TensorSpec:
    """The tensor called ``name`` (default: the first one), or a mismatch error listing them."""
    if not tensors:
        raise ModelMismatchError(f"{where}: the model has no {kind}s.")
    if not name:
        return tensors[0]
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ModelMismatchError(f"{where}: the model has no {kind} {name!r} ({kind}s: {', '.join(t.name for t in tensors)}).")


def check_input_shape(spec: ModelSpec, tensor: TensorSpec, shape: Sequence[int], where: str) -> None:
    """Refuse a per-item input shape (no batch axis) that the model's dims do not admit."""
    dims = tensor.dims
    if len(dims) != len(shape) or any(d != -1 and d != s for d, s in zip(dims, shape, strict=True)):
        raise ModelMismatchError(
            f"{where}: model {spec.name!r} input {tensor.name!r} takes {list(dims)} per item, this app sends "
            f"{list(shape)} (channels, then the window size in x, y, z).")


def fixed_window(spec: ModelSpec, tensor: TensorSpec) -> list[int] | None:
    """The model's spatial dims when they are all fixed (the Clara default window size)."""
    spatial_dims = list(tensor.dims[-3:])
    return spatial_dims if len(spatial_dims) == 3 and all(d > 0 for d in spatial_dims) else None
