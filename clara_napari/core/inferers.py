"""Inferers: the config's ``inferer`` section, and how each one runs the model on a volume.

Every inferer has :meth:`InfererSpec.infer` ``(image [C, x, y, z], model, run) -> prediction``:

- a classifier (``output_type: CLASSIFICATION``, or a model whose output has no spatial axes):
  one request with the whole volume → class scores ``[classes]``;
- :class:`SimpleInferer` (and any inferer when ``use_scanning_window`` is false): one window of
  the whole volume padded to ``pad_to_multiple`` → ``[C_out, x, y, z]``;
- :class:`ScanWindowInferer` / :class:`SlidingWindowInferer`: scanning windows of ``roi_size``
  stitched by :func:`~clara_napari.core.windows.sliding_window` → ``[C_out, x, y, z]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from .backends.base import check_input_shape, fixed_window
from .errors import Cancelled, ConfigError
from .progress import CancelToken, Progress
from .registry import Component, Registry
from .resources import check_inference
from .windows import sliding_window

if TYPE_CHECKING:
    from .backends.base import ModelHandle
    from .config import InferenceConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceRun:
    """What an inferer needs to know of the app it runs in (besides its own args)."""

    #: the config file (for errors and warnings), None for a config made in code
    file: Path | None = None
    #: the config's top-level ``batch_size`` (used when the inferer names none)
    batch_size: int = 1
    #: the config's ``use_scanning_window`` (false: one window of the whole volume)
    use_scanning_window: bool = True
    #: the model was given with ``--model`` / ``model=`` (its limits win over the config's sizes)
    model_override: bool = False

    @classmethod
    def of(cls, config: InferenceConfig) -> InferenceRun:
        return cls(file=config.file, batch_size=config.batch_size, use_scanning_window=config.use_scanning_window,
                   model_override=bool(config.model_override))

    @property
    def name(self) -> str:
        return self.file.name if self.file is not None else "the config"


#: Largest scanning-window overlap an app may ask for (0.95: 20x the windows per axis of no overlap).
MAX_OVERLAP = 0.95

INFERERS = Registry("inferer")


class InfererSpec(Component):
    """What every inferer shares: which model, where (Clara's TRTIS args) and how to send requests."""

    scanning: ClassVar[bool] = False

    model_name: str = ""
    model_version: str = ""
    ip: str | None = None
    server_ip: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["HTTP", "GRPC", "http", "grpc"] = "HTTP"
    output_type: Literal["RAW", "CLASSIFICATION"] = "RAW"
    batch_size: int | None = Field(None, ge=1)
    requests_in_flight: int = Field(2, ge=1, le=64)
    timeout_s: float = Field(120.0, gt=0)
    input_name: str = ""
    output_name: str = ""
    pad_value: float = 0.0
    #: test-time augmentation: "none", "mirror" (every combination of the x, y, z axes: 8
    #: predictions per window) or a list of axes to mirror [0 = x, 1 = y, 2 = z]
    tta: Literal["none", "mirror"] | list[int] = "none"

    @field_validator("tta")
    @classmethod
    def _axes(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or any(a not in (0, 1, 2) for a in value)):
            raise ValueError("needs \"none\", \"mirror\" or a list of distinct axes from 0 (x), 1 (y), 2 (z)")
        return value

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """The spatial axes test-time augmentation mirrors (empty: none)."""
        if self.tta == "none":
            return ()
        return (0, 1, 2) if self.tta == "mirror" else tuple(self.tta)

    @property
    def host(self) -> str | None:
        return self.server_ip or self.ip

    @property
    def address(self) -> str | None:
        """``host:port`` from the config args, if they name a server."""
        if not self.host:
            return None
        return f"{self.host}:{self.port or (8001 if self.protocol.upper() == 'GRPC' else 8000)}"

    #: the whole volume is padded to a multiple of this many voxels per axis (SimpleInferer's arg)
    @property
    def pad_multiple(self) -> int:
        return 1

    def classifies(self, model: ModelHandle) -> bool:
        """A model whose output has no spatial axes (class scores), or an app that says so."""
        return self.output_type == "CLASSIFICATION" or len(model.output.dims) == 1

    def batch_for(self, model: ModelHandle, run: InferenceRun) -> int:
        """Windows per request: the inferer's ``batch_size``, else the config's, within what a model
        given with ``--model`` takes."""
        batch_size = self.batch_size or run.batch_size
        limit = getattr(model, "max_batch_size", 0) or 0
        if run.model_override and 0 < limit < batch_size:
            # the config's batch was sized for its own model; the model given with --model takes fewer
            log.warning("%s: the model %r takes batches of %d at most; using %d instead of %d.", run.name,
                        model.spec.name, limit, limit, batch_size)
            batch_size = limit
        return batch_size

    def infer(self, image: np.ndarray, model: ModelHandle, run: InferenceRun, *,
              progress: Progress | None = None, cancel: CancelToken | None = None) -> np.ndarray:
        """``image`` ``[C, x, y, z]`` → class scores ``[classes]`` or the stitched output ``[C_out, x, y, z]``."""
        self.batch_for(model, run)   # warns when a model given with --model takes smaller batches
        if self.classifies(model):
            return self.classify(image, model, cancel=cancel)
        return self.whole_volume(image, model, progress=progress, cancel=cancel)

    def classify(self, image: np.ndarray, model: ModelHandle, *, cancel: CancelToken | None = None) -> np.ndarray:
        """One request with the whole volume (padded to :attr:`pad_multiple`); returns the class scores."""
        multiple = self.pad_multiple
        pad = [(0, 0)] + [(0, int(np.ceil(s / multiple) * multiple) - s) for s in image.shape[1:]]
        if any(after for _, after in pad):
            image = np.pad(image, pad, constant_values=self.pad_value)
        check_input_shape(model.spec, model.input, image.shape, model.spec.name)
        if cancel is not None and cancel.cancelled:
            raise Cancelled("the inference was cancelled.")
        scores = np.asarray(model.predict(image[None]))
        if scores.ndim != 2 or scores.shape[0] != 1:
            raise ConfigError(f"the classification model {model.spec.name!r} returned shape {list(scores.shape)}, "
                              "expected [1, classes].")
        return scores[0].astype(np.float32)

    def whole_volume(self, image: np.ndarray, model: ModelHandle, *, progress: Progress | None = None,
                     cancel: CancelToken | None = None) -> np.ndarray:
        """One window of the whole (padded) volume: the engine pads, predicts once and crops."""
        multiple = self.pad_multiple
        roi = [int(np.ceil(s / multiple) * multiple) for s in image.shape[1:]]
        check_input_shape(model.spec, model.input, (image.shape[0], *roi), model.spec.name)
        return sliding_window(image, model, roi, overlap=0.0, blending="constant", batch_size=1,
                              pad_value=self.pad_value, progress=progress, cancel=cancel,
                              mirror_axes=self.mirror_axes)


@INFERERS.register("TRTISScanWindowInferer", "TritonScanWindowInferer", "TFScanWindowInferer",
                   "ScanWindowInferer")
class ScanWindowInferer(InfererSpec):
    """Scanning windows of ``roi_size`` [x, y, z] (default: the model's fixed dims)."""

    scanning: ClassVar[bool] = True

    roi_size: list[int] | None = None
    overlap: float = Field(0.25, ge=0.0, le=MAX_OVERLAP)
    blending: Literal["constant", "gaussian"] = "constant"

    @field_validator("roi_size")
    @classmethod
    def _positive(cls, value):
        if value is not None and (len(value) != 3 or any(v <= 0 for v in value)):
            raise ValueError("needs three positive whole numbers [x, y, z]")
        return value

    def infer(self, image: np.ndarray, model: ModelHandle, run: InferenceRun, *,
              progress: Progress | None = None, cancel: CancelToken | None = None) -> np.ndarray:
        if self.classifies(model) or not run.use_scanning_window:
            return super().infer(image, model, run, progress=progress, cancel=cancel)
        return self.scan(image, model, run, progress=progress, cancel=cancel)

    def window_for(self, model: ModelHandle, run: InferenceRun) -> list[int]:
        """``roi_size``, else the model's fixed window; a model given with ``--model`` that takes one
        window size only gets it."""
        tensor = model.input
        fixed = fixed_window(model.spec, tensor)
        roi = self.roi_size or fixed
        if run.model_override and fixed is not None and self.roi_size and list(fixed) != list(self.roi_size):
            # the config's window was sized for its own model; a model given with --model that takes one
            # window size only gets it (as Clara Deploy's operator, which never passed roi_size on)
            log.warning("%s: the model %r takes windows of %s only; using them instead of the inferer's roi_size %s.",
                        run.name, model.spec.name, list(fixed), list(self.roi_size))
            roi = fixed
        if roi is None:
            raise ConfigError(f"{run.file}: inferer.args.roi_size: the model {model.spec.name!r} has no fixed "
                              f"window size (dims {list(tensor.dims)}); set roi_size [x, y, z].")
        return list(roi)

    def scan(self, image: np.ndarray, model: ModelHandle, run: InferenceRun, *,
             progress: Progress | None = None, cancel: CancelToken | None = None) -> np.ndarray:
        """Scanning windows over ``image``, stitched (after the memory check of the whole run)."""
        batch_size = self.batch_for(model, run)
        roi = self.window_for(model, run)
        check_input_shape(model.spec, model.input, (image.shape[0], *roi), model.spec.name)
        # a fleet of servers keeps each endpoint's requests in flight at once
        in_flight = getattr(model, "requests_in_flight", None) or self.requests_in_flight
        out_dims = list(model.output.dims)
        check_inference(str(run.file or model.spec.name), image.shape[1:], roi, self.overlap,
                        in_channels=image.shape[0], out_channels=out_dims[0] if len(out_dims) == 4 and out_dims[0] > 0
                        else None, batch_size=batch_size, in_flight=in_flight,
                        input_bytes=image.nbytes)
        return sliding_window(image, model, roi, overlap=self.overlap, blending=self.blending,
                              batch_size=batch_size, in_flight=in_flight,
                              pad_value=self.pad_value, progress=progress, cancel=cancel,
                              mirror_axes=self.mirror_axes)


@INFERERS.register("TRTISSimpleInferer", "TritonSimpleInferer", "TFSimpleInferer", "SimpleInferer")
class SimpleInferer(InfererSpec):
    """One request with the whole volume, padded to a multiple of ``pad_to_multiple`` voxels."""

    pad_to_multiple: int = Field(1, ge=1)

    @property
    def pad_multiple(self) -> int:
        return self.pad_to_multiple


@INFERERS.register("SlidingWindowInferer")
class SlidingWindowInferer(ScanWindowInferer):
    """Clara 4's (MONAI's) scanning-window inferer: ``roi_size``, ``sw_batch_size``, ``overlap``,
    ``mode`` (constant/gaussian) and ``cval`` on the same engine; the model is served by Triton or
    the local runtime (never built from the config)."""

    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(1, ge=1)
    mode: Literal["constant", "gaussian"] = "constant"
    sigma_scale: float | list[float] = 0.125
    padding_mode: Literal["constant"] = "constant"
    cval: float = 0.0
    device: str | None = None
    sw_device: str | None = None
    progress: bool = False
    cache_roi_weight_map: bool = False

    def model_post_init(self, context) -> None:
        # the engine reads the Clara 3 names
        object.__setattr__(self, "blending", self.mode)
        object.__setattr__(self, "pad_value", self.cval)
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", self.sw_batch_size)
