"""The notebook API: ``segment``, ``read_volume``, ``write_volume``."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .core.apps import App, resolve_app
from .core.pipeline import Segmentation
from .core.progress import CancelToken, Progress
from .core.resources import check_run_memory
from .core.session import Session
from .core.volume import Volume, check_voxels, read_volume, write_volume

__all__ = ["segment", "run_app", "read_volume", "write_volume", "Volume"]

log = logging.getLogger(__name__)


def run_app(volume_or_path: Volume | str | Path, app: str | Path | App | None = None, *, server: str | None = None,
            progress: Progress | None = None, cancel: CancelToken | None = None, threads: int | None = None,
            model: str | None = None, strict: bool = False, probabilities: bool = False,
            **server_options) -> Segmentation:
    """Run an app on one volume and return the full :class:`Segmentation` (all writers' outputs, timings).

    ``probabilities=True`` also keeps ``.probabilities``: the foreground score (the stitched model output
    before argmax) as a float32 volume on the input's grid (it costs 4 bytes a voxel; None otherwise).

    ``model`` names the Triton model serving the app instead of its inferer's ``model_name``
    (e.g. for an MMAR, whose config names a model file). An in-memory volume gets the same voxel
    checks as a file. What does not match the app's expectations is logged as a warning and listed
    in ``.warnings`` (``strict=True``: raised as :class:`~clara_napari.core.errors.ImplausibleError`);
    ``.volumes_ml`` gives ml per label.
    """
    app = app if isinstance(app, App) else resolve_app(app)
    if model:
        app = dataclasses.replace(app, model=model)
    config = app.config
    config.require_model()
    # checked before a server starts (segment_volume checks again)
    volume = check_voxels(volume_or_path) if isinstance(volume_or_path, Volume) else read_volume(
        volume_or_path, before_voxels=lambda header: check_run_memory(header, config))
    runtime = server_options.pop("runtime", None)
    with Session(app, server, threads=threads, runtime=runtime, transport=server_options) as session:
        segmentation = session.segment(volume, progress=progress, cancel=cancel, strict=strict,
                                       probabilities=probabilities)
    for finding in segmentation.warnings:
        log.warning("%s: %s", volume.path or "in-memory volume", finding)
    return segmentation


def segment(volume_or_path: Volume | str | Path, app: str | Path | App | None = None, *, server: str | None = None,
            progress: Progress | None = None, cancel: CancelToken | None = None, threads: int | None = None,
            model: str | None = None, dicom_seg: str | Path | None = None, strict: bool = False,
            **server_options) -> Volume:
    """Segment a volume (or a path) with an app and return the label :class:`Volume`.

    ``server``: ``"local"`` (the model runs in this process), ``"embedded"``, a Triton address, a
    list of them (the windows spread over several servers: docs/scale.md), or ``None`` for the
    default (``$NVIDIA_CLARA_TRTISURI``, else the app's ip/port, else an embedded Triton server:
    :func:`clara_napari.core.session.choose_server` decides, as for every entry point). The labels have the
    input's size, spacing, origin and direction exactly. ``strict=True``: a volume or result that
    is not what the app expects raises :class:`~clara_napari.core.errors.ImplausibleError`.

    ``dicom_seg``: for a DICOM series input, also write a DICOM SEG there (a folder gets
    ``<name>.seg.dcm``); any other input is refused before inferring.
    """
    if dicom_seg is not None:
        from .core.dicom.writer import require_dicom_source

        require_dicom_source(volume_or_path.path if isinstance(volume_or_path, Volume) else volume_or_path, "dicom_seg")
    app = app if isinstance(app, App) else resolve_app(app)
    segmentation = run_app(volume_or_path, app, server=server, progress=progress, cancel=cancel, threads=threads,
                           model=model, strict=strict, **server_options)
    if dicom_seg is not None:
        from .core.dicom.seg import SEG_SUFFIX, seg_path
        from .core.dicom.writer import write_app_seg
        from .core.volume import safe_stem

        target = Path(dicom_seg)
        if not target.name.endswith(SEG_SUFFIX) and not target.name.endswith(".dcm"):
            target = seg_path(target, safe_stem(segmentation.source.name))
        write_app_seg(segmentation.labels, app, target, model=segmentation.model)
    return segmentation.labels
