"""The whole flow, top to bottom.

    Volume → pre-transforms → inferer (windows → predictor → stitching) → post-transforms → writers

:func:`segment_volume` is the one place where these steps meet; every step lives in its own module
and carries its own behaviour (``transforms``; ``inferers``: scanning window, whole volume,
classifier, over ``windows`` and ``backends``; ``writers``: label volume, classification result).
Long work reports progress and honours a :class:`~clara_napari.core.progress.CancelToken`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .backends.base import ModelHandle
from .config import InferenceConfig
from .errors import Cancelled, ConfigError, ImplausibleError
from .expectations import check_input, check_output, label_volumes_ml
from .geometry import Grid, onto_grid
from .inferers import InferenceRun
from .progress import CancelToken, Progress
from .transforms import FieldMeta, Sample
from .transforms.spatial import LoadNifti
from .volume import Volume, check_voxels
from .writers import ClassificationResult, Writer

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

    # 2. the inferer: windows → predictor → stitching (or one whole-volume request, or class scores)
    stage("inference")
    prediction = config.inferer.infer(image, model, InferenceRun.of(config), progress=progress, cancel=cancel)
    sample.put(config.output_field, prediction, sample.meta["image"].copy(is_label=False))  # scores: [C] for classifiers
    scores = _scores_volume(prediction, sample.meta["image"], volume) if probabilities and prediction.ndim == 4 else None
    lap("inference")

    # 3. post-transforms
    stage("post-transforms")
    for transform in config.post_transforms:
        transform(sample)
    lap("post_transforms")

    # 4. writers' outputs: volumes back on the input's grid with the input's geometry, bit for bit; class scores
    label_table = config.label_table()
    outputs = [(writer, writer.output(sample, volume, label_table)) for writer in config.writers]
    lap("restore_geometry")
    labels = next((value for _, value in outputs if isinstance(value, Volume)), None)
    volumes_ml = label_volumes_ml(labels, label_table.names()) if labels is not None else {}
    findings += check_output(volumes_ml, label_table.names(), config.expectations)
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
