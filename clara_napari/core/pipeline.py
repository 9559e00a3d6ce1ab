"""The whole flow, top to bottom.

    Volume → pre-transforms → windows → predictor → stitching → post-transforms → writers

:func:`segment` is the one place where these steps meet; every step lives in its own module
(``transforms``, ``windows``, ``backends``, ``writers``). Long work reports progress and
honours a :class:`~clara_napari.core.progress.CancelToken`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.base import ModelHandle, check_input_shape, fixed_window
from .components import ClassificationResult, ClassificationWriter, SimpleInferer, Writer
from .config import InferenceConfig
from .errors import Cancelled, ConfigError, ImplausibleError
from .expectations import check_input, check_output, label_volumes_ml
from .geometry import Grid, onto_grid
from .progress import CancelToken, Progress
from .resources import check_inference
from .transforms import FieldMeta, Sample
from .transforms.spatial import LoadNifti
from .volume import Volume, check_voxels
from .windows import sliding_window

log = logging.getLogger(__name__)

#: ``stage(name)`` is told when a new stage starts (for status lines and logs).
StageCallback = Callable[[str], None]


@dataclass
class Segmentation:
    """What one run produced: one output volume per writer, on the input's grid."""

    source: Volume
    outputs: list[tuple[Writer, Volume | ClassificationResult]]
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    backend: str = ""
    #: findings of the app's expectations (input and result), one sentence each; empty when plausible
    warnings: list[str] = field(default_factory=list)
    #: millilitres per label name of the label map (empty for classification apps)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    #: the foreground score (the stitched model output before argmax, see :func:`foreground_score`) on the
    #: input's grid as float32; only when asked for (``segment_volume(..., probabilities=True)``), else None
    probabilities: Volume | None = None

    @property
    def labels(self) -> Volume:
        """The first volume output: the label map the operator contract writes."""
        for _, value in self.outputs:
            if isinstance(value, Volume):
                return value
        raise ConfigError("this app writes no volume (a classification app: see .classification).")

    @property
    def classification(self) -> ClassificationResult | None:
        return next((v for _, v in self.outputs if isinstance(v, ClassificationResult)), None)


def segment_volume(volume: Volume, config: InferenceConfig, model: ModelHandle, *,
                   progress: Progress | None = None, cancel: CancelToken | None = None,
                   stage: StageCallback | None = None, strict: bool = False,
                   probabilities: bool = False) -> Segmentation:
    """Run one app (``config``) with one model handle on ``volume``.

    The input and the result are checked against the app's expectations; what fails is listed
    in ``Segmentation.warnings``, or raised as :class:`ImplausibleError` when ``strict``.
    ``probabilities``: also keep the foreground score on the input's grid (a float32 volume the size
    of the input; off by default for memory).
    """
    stage = stage or (lambda name: None)
    check_voxels(volume)   # volumes made in memory (API, napari layers) get the readers' voxel checks
    findings = check_input(volume, config.expectations)
    _refuse(findings, volume, strict)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        if cancel is not None and cancel.cancelled:
            raise Cancelled("the inference was cancelled.")

    # 1. pre-transforms (Clara's (x, y, z) channels-first arrays from here on)
    stage("pre-transforms")
    sample = Sample(image=volume)
    for transform in config.pre_transforms:
        transform(sample)
    if isinstance(sample["image"], Volume):   # a config without a Load transform
        LoadNifti(fields=["image"])(sample)
    image = sample.array("image", "inferer")
    if image.ndim == 3:
        image = image[None]
    lap("pre_transforms")

    # 2. windows → predictor → stitching
    stage("inference")
    prediction = _infer(image, config, model, progress, cancel)
    sample.put(config.output_field, prediction, sample.meta["image"].copy(is_label=False))  # scores: [C] for classifiers
    scores = _scores_volume(prediction, sample.meta["image"], volume) if probabilities and prediction.ndim == 4 else None
    lap("inference")

    # 3. post-transforms
    stage("post-transforms")
    for transform in config.post_transforms:
        transform(sample)
    lap("post_transforms")

    # 4. writers' fields, back on the input's grid with the input's geometry, bit for bit
    outputs = [(writer, _to_scores(sample, writer, config) if isinstance(writer, ClassificationWriter)
                 else _to_volume(sample, writer, volume)) for writer in config.writers]
    lap("restore_geometry")
    labels = next((value for _, value in outputs if isinstance(value, Volume)), None)
    volumes_ml = label_volumes_ml(labels, config.label_names()) if labels is not None else {}
    findings += check_output(volumes_ml, config.label_names(), config.expectations)
    _refuse(findings, volume, strict)
    return Segmentation(source=volume, outputs=outputs, timings=timings, model=model.spec.name,
                        backend=model.description, warnings=findings, volumes_ml=volumes_ml, probabilities=scores)


def _refuse(findings: list[str], volume: Volume, strict: bool) -> None:
    if strict and findings:
        raise ImplausibleError(f"{volume.path or 'the in-memory volume'}: refused (strict): {' '.join(findings)}")


def foreground_score(prediction: np.ndarray) -> np.ndarray:
    """``[C, X, Y, Z]`` model output → ``[1, X, Y, Z]`` float32 score, as the model gave it (no activation
    added): its only channel, else the largest of the non-background channels (1..C-1)."""
    channels = prediction if prediction.shape[0] == 1 else prediction[1:]
    return np.max(channels, axis=0, keepdims=True).astype(np.float32, copy=False)


def _scores_volume(prediction: np.ndarray, meta: FieldMeta, source: Volume) -> Volume:
    """The foreground score brought back onto the input's grid (linear resampling where the grids differ)."""
    target = Grid.of(source)
    array = onto_grid(foreground_score(prediction), meta.grid, target, is_label=False)
    if tuple(array.shape[1:]) != target.size:
        raise ConfigError("the model output could not be brought back to the input grid for its probabilities.")
    return source.with_array(np.ascontiguousarray(array[0].transpose(2, 1, 0), dtype=np.float32), path=None)


def _infer(image: np.ndarray, config: InferenceConfig, model: ModelHandle, progress: Progress | None,
           cancel: CancelToken | None) -> np.ndarray:
    inferer = config.inferer
    tensor = model.input
    batch_size = inferer.batch_size or config.batch_size
    limit = getattr(model, "max_batch_size", 0) or 0
    if config.model_override and 0 < limit < batch_size:
        # the config's batch was sized for its own model; the model given with --model takes fewer
        log.warning("%s: the model %r takes batches of %d at most; using %d instead of %d.", config.file.name,
                    model.spec.name, limit, limit, batch_size)
        batch_size = limit
    if is_classifier(config, model):
        return _classify(image, config, model, cancel)
    if config.scanning:
        roi = inferer.roi_size or fixed_window(model.spec, tensor)
        fixed = fixed_window(model.spec, tensor)
        if config.model_override and fixed is not None and inferer.roi_size and list(fixed) != list(inferer.roi_size):
            # the config's window was sized for its own model; a model given with --model that takes one
            # window size only gets it (as Clara Deploy's operator, which never passed roi_size on)
            log.warning("%s: the model %r takes windows of %s only; using them instead of the inferer's roi_size %s.",
                        config.file.name, model.spec.name, list(fixed), list(inferer.roi_size))
            roi = fixed
        if roi is None:
            raise ConfigError(f"{config.file}: inferer.args.roi_size: the model {model.spec.name!r} has no fixed "
                              f"window size (dims {list(tensor.dims)}); set roi_size [x, y, z].")
        check_input_shape(model.spec, tensor, (image.shape[0], *roi), model.spec.name)
        # a fleet of servers keeps each endpoint's requests in flight at once
        in_flight = getattr(model, "requests_in_flight", None) or inferer.requests_in_flight
        out_dims = list(model.output.dims)
        check_inference(config.file or model.spec.name, image.shape[1:], roi, inferer.overlap,
                        in_channels=image.shape[0], out_channels=out_dims[0] if len(out_dims) == 4 and out_dims[0] > 0
                        else None, batch_size=batch_size, in_flight=in_flight,
                        input_bytes=image.nbytes)
        return sliding_window(image, model, roi, overlap=inferer.overlap, blending=inferer.blending,
                              batch_size=batch_size, in_flight=in_flight,
                              pad_value=inferer.pad_value, progress=progress, cancel=cancel,
                              mirror_axes=inferer.mirror_axes)
    multiple = inferer.pad_to_multiple if isinstance(inferer, SimpleInferer) else 1
    roi = [int(np.ceil(s / multiple) * multiple) for s in image.shape[1:]]
    check_input_shape(model.spec, tensor, (image.shape[0], *roi), model.spec.name)
    # one window of the whole (padded) volume: the engine pads, predicts once and crops
    return sliding_window(image, model, roi, overlap=0.0, blending="constant", batch_size=1,
                          pad_value=inferer.pad_value, progress=progress, cancel=cancel,
                          mirror_axes=inferer.mirror_axes)


def is_classifier(config: InferenceConfig, model: ModelHandle) -> bool:
    """A model whose output has no spatial axes (class scores), or an app that says so."""
    return config.inferer.output_type == "CLASSIFICATION" or len(model.output.dims) == 1


def _classify(image: np.ndarray, config: InferenceConfig, model: ModelHandle, cancel: CancelToken | None) -> np.ndarray:
    """One request with the whole volume (padded to ``pad_to_multiple``); returns the class scores."""
    multiple = config.inferer.pad_to_multiple if isinstance(config.inferer, SimpleInferer) else 1
    pad = [(0, 0)] + [(0, int(np.ceil(s / multiple) * multiple) - s) for s in image.shape[1:]]
    if any(after for _, after in pad):
        image = np.pad(image, pad, constant_values=config.inferer.pad_value)
    check_input_shape(model.spec, model.input, image.shape, model.spec.name)
    if cancel is not None and cancel.cancelled:
        raise Cancelled("the inference was cancelled.")
    scores = np.asarray(model.predict(image[None]))
    if scores.ndim != 2 or scores.shape[0] != 1:
        raise ConfigError(f"the classification model {model.spec.name!r} returned shape {list(scores.shape)}, "
                          "expected [1, classes].")
    return scores[0].astype(np.float32)


def _to_scores(sample: Sample, writer: ClassificationWriter, config: InferenceConfig) -> ClassificationResult:
    scores = np.asarray(sample.array(writer.field, f"writer for {writer.field!r}"), dtype=np.float64).ravel()
    # the app's labels name classes by value; class i is label value i (0 = the first class)
    names = {value: name for value, name in config.label_names().items()}
    return writer.result(scores, names)


def _to_volume(sample: Sample, writer: Writer, source: Volume) -> Volume:
    array = sample.array(writer.field, f"writer for {writer.field!r}")
    meta: FieldMeta = sample.meta[writer.field]
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ConfigError(f"writers: field {writer.field!r} has {array.shape[0]} channels; reduce it to one "
                              "(e.g. ArgmaxAcrossChannels) before writing.")
        array = array[0]
    target = Grid.of(source)
    array = onto_grid(array, meta.grid, target, is_label=writer.is_label or meta.is_label)
    if tuple(array.shape) != target.size:
        raise ConfigError(f"writers: field {writer.field!r} could not be brought back to the input grid.")
    return source.with_array(np.ascontiguousarray(array.transpose(2, 1, 0).astype(writer.dtype)),
                             path=Path(source.path) if source.path else None)
