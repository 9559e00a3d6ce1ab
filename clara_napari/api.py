"""The notebook API: ``segment``, ``read_volume``, ``write_volume``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .core.apps import App, resolve_app
from .core.backends import open_backend
from .core.pipeline import Segmentation, segment_volume
from .core.progress import CancelToken, Progress
from .core.resources import check_run_memory
from .core.volume import Volume, read_volume, write_volume

__all__ = ["segment", "run_app", "read_volume", "write_volume", "Volume"]


def run_app(volume_or_path: Volume | str | Path, app: str | Path | App | None = None, *, server: str | None = None,
            progress: Progress | None = None, cancel: CancelToken | None = None, threads: int | None = None,
            model: str | None = None, **server_options) -> Segmentation:
    """Run an app on one volume and return the full :class:`Segmentation` (all writers' outputs, timings).

    ``model`` names the Triton model serving the app instead of its inferer's ``model_name``
    (e.g. for an MMAR, whose config names a model file).
    """
    app = app if isinstance(app, App) else resolve_app(app)
    if model:
        app = dataclasses.replace(app, model=model)
    config = app.config
    config.require_model()
    volume = volume_or_path if isinstance(volume_or_path, Volume) else read_volume(
        volume_or_path, before_voxels=lambda header: check_run_memory(header, config))
    backend = open_backend(server, threads=threads, app=app, **server_options)
    try:
        model = backend.open(app.model_repository, config.model_name, input_name=config.inferer.input_name,
                             output_name=config.inferer.output_name, version=config.inferer.model_version,
                             inferer=config.inferer, model_loader=config.model_loader)
        try:
            return segment_volume(volume, config, model, progress=progress, cancel=cancel)
        finally:
            model.close()
    finally:
        backend.close()


def segment(volume_or_path: Volume | str | Path, app: str | Path | App | None = None, *, server: str | None = None,
            progress: Progress | None = None, cancel: CancelToken | None = None, threads: int | None = None,
            model: str | None = None, **server_options) -> Volume:
    """Segment a volume (or a path) with an app and return the label :class:`Volume`.

    ``server``: ``"local"`` (onnxruntime in process), a Triton address, a list of them (the
    windows spread over several servers: docs/scale.md), or ``None`` for the
    default (``$NVIDIA_CLARA_TRTISURI``, else an embedded Triton server). The labels have the
    input's size, spacing, origin and direction exactly.
    """
    return run_app(volume_or_path, app, server=server, progress=progress, cancel=cancel, threads=threads,
                   model=model, **server_options).labels
