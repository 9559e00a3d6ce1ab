"""Clara 4 (MONAI-style) post-transforms: activations, discretising, the largest component, inverting.

The pre-transforms are in :mod:`.monai_style`, what every MONAI-style transform shares (``keys``,
one value per key) in :mod:`.monai_base`.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..geometry import onto_grid
from .base import TRANSFORMS, FieldMeta, Sample
from .monai_base import MonaiTransform, one_per_key


@TRANSFORMS.register("Activationsd")
class Activationsd(MonaiTransform):
    """``softmax`` across channels or ``sigmoid`` (``other``, a Python callable, is never accepted)."""

    softmax: bool | list[bool] = False
    sigmoid: bool | list[bool] = False

    def __call__(self, sample: Sample) -> None:
        softmax = one_per_key(self.softmax, self.keys, self.config_name)
        sigmoid = one_per_key(self.sigmoid, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name).astype(np.float32)
            if softmax[index]:
                array = np.exp(array - array.max(axis=0, keepdims=True))
                array /= array.sum(axis=0, keepdims=True)
            elif sigmoid[index]:
                array = 1.0 / (1.0 + np.exp(-array))
            sample[key] = array.astype(np.float32)


@TRANSFORMS.register("AsDiscreted")
class AsDiscreted(MonaiTransform):
    """``argmax`` across channels → a ``[1, X, Y, Z]`` label map, or a ``threshold`` (``threshold_values``
    with ``logit_thresh`` in Clara 4.0). ``to_onehot`` is accepted: the label map written is the
    same information (one channel per class is never written)."""

    argmax: bool | list[bool] = False
    to_onehot: bool | int | None | list[bool | int | None] = None
    n_classes: int | list[int] | None = None
    num_classes: int | list[int] | None = None
    threshold_values: bool | list[bool] = False
    logit_thresh: float | list[float] = 0.5
    threshold: float | list[float] | None = None
    rounding: str | None = None
    dtype: Any = None

    def __call__(self, sample: Sample) -> None:
        argmax = one_per_key(self.argmax, self.keys, self.config_name)
        threshold_on = one_per_key(self.threshold_values, self.keys, self.config_name)
        logit = one_per_key(self.logit_thresh, self.keys, self.config_name)
        threshold = one_per_key(self.threshold, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name)
            meta = sample.meta[key]
            if argmax[index]:
                labels = np.argmax(array, axis=0)[None] if array.ndim == 4 else array > 0.5
            elif threshold[index] is not None or threshold_on[index]:
                value = threshold[index] if threshold[index] is not None else logit[index]
                labels = array >= value
            elif self.rounding == "torchrounding":
                labels = np.round(array)
            else:
                continue
            sample.put(key, labels.astype(np.uint8), meta.copy(is_label=True))


@TRANSFORMS.register("KeepLargestConnectedComponentd")
class KeepLargestConnectedComponentd(MonaiTransform):
    """Keep the largest connected component of each label in ``applied_labels`` (default: every
    non-zero label); ``connectivity`` 1..3 (default 3, MONAI's full connectivity)."""

    applied_labels: int | list[int] | None = None
    independent: bool = True
    connectivity: Literal[1, 2, 3] | None = None
    is_onehot: bool | None = None
    num_components: int = Field(1, ge=1)

    def __call__(self, sample: Sample) -> None:
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(3, self.connectivity or 3)
        for _, key in self.present(sample):
            array = sample.array(key, self.config_name)
            spatial = array[0] if array.ndim == 4 else array
            if array.ndim == 4 and array.shape[0] != 1:
                raise ConfigError(f"{self.config_name}: key {key!r} has {array.shape[0]} channels; "
                                  "put AsDiscreted(argmax) first.")
            out = spatial.copy()
            values = [int(v) for v in np.unique(spatial) if v != 0]
            applied = values if self.applied_labels is None else \
                list([self.applied_labels] if isinstance(self.applied_labels, int) else self.applied_labels)
            groups = [[v] for v in applied] if self.independent else [applied]
            for group in groups:
                mask = np.isin(spatial, group)
                labelled, count = ndimage.label(mask, structure=structure)
                if count <= 1:
                    continue
                sizes = np.bincount(labelled.ravel())[1:]
                keep = np.argsort(sizes)[::-1][: self.num_components] + 1
                out[mask & ~np.isin(labelled, keep)] = 0
            sample[key] = out[None] if array.ndim == 4 else out


@TRANSFORMS.register("Invertd")
class Invertd(MonaiTransform):
    """Bring ``keys`` back onto the grid ``orig_keys`` was loaded on (undoes Spacingd, Orientationd,
    CropForegroundd …): exact reorientation, then resampling (nearest with ``nearest_interp`` or
    for labels, else linear)."""

    transform: str = "@pre_transforms"
    orig_keys: list[str] | str = "image"
    meta_keys: Any = None
    orig_meta_keys: Any = None
    meta_key_postfix: str = "meta_dict"
    nearest_interp: bool | list[bool] = True
    to_tensor: bool | list[bool] = True
    device: Any = None
    post_func: Any = None

    @field_validator("transform")
    @classmethod
    def _reference(cls, value):
        if value != "@pre_transforms":
            raise ValueError("only '@pre_transforms' can be inverted")
        return value

    @field_validator("post_func")
    @classmethod
    def _no_code(cls, value):
        if value is not None:
            raise ValueError("post_func would run code; it is not accepted")
        return value

    def __call__(self, sample: Sample) -> None:
        origs = one_per_key(self.orig_keys, self.keys, self.config_name)
        nearest = one_per_key(self.nearest_interp, self.keys, self.config_name)
        for index, key in self.present(sample):
            array = sample.array(key, self.config_name)
            sample.array(origs[index], self.config_name)
            src: FieldMeta = sample.meta[origs[index]]
            meta = sample.meta.get(key, src)
            original = src.original or src.grid
            out = onto_grid(array, meta.grid, original, is_label=bool(nearest[index]) or meta.is_label)
            sample.put(key, out, meta.copy(grid=original, original=original))
