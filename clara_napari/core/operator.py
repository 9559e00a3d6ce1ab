"""The headless operator: every volume of an input folder → outputs (and publish bundle).

This is what ``clara-napari run`` (and a Clara pipeline) drives. One backend and one model
handle serve the whole folder; each volume succeeds or fails on its own, and a failure never
leaves a partial file behind.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .apps import App
from .backends import open_backend
from .errors import Cancelled, ClaraNapariError, VolumeError
from .expectations import format_volumes
from .pipeline import Segmentation, segment_volume
from .progress import CancelToken, Progress
from .volume import find_volumes, looks_like_dicom_folder, read_volume, safe_stem, volume_stem

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    app: App
    input: Path
    output: Path
    publish: Path | None = None
    logs: Path | None = None
    server: str | None = None
    overwrite: bool = False
    first_only: bool = False
    threads: int | None = None
    publish_format: str = "meta"
    server_options: dict = field(default_factory=dict)
    #: a volume that fails the app's expectations is an error (nothing written), not a warning
    strict: bool = False


@dataclass
class VolumeResult:
    input: Path
    ok: bool
    message: str
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    segmentation: Segmentation | None = None

    @property
    def warnings(self) -> list[str]:
        return self.segmentation.warnings if self.segmentation is not None else []


def list_inputs(path: Path, first_only: bool = False) -> list[Path]:
    """The volumes to process: the file itself, or each volume of the folder (sorted)."""
    path = Path(path)
    if path.is_file():
        inputs = [path]
    else:
        inputs = find_volumes(path)
        if not inputs and looks_like_dicom_folder(path):
            inputs = [path]
    if not inputs:
        raise VolumeError(f"{path}: the input folder holds no supported volume "
                          "(.nii, .nii.gz, .mhd, .mha, .nrrd or a DICOM series folder).")
    return inputs[:1] if first_only else inputs


def planned_outputs(options: RunOptions, source: Path) -> list[Path]:
    config = options.app.config
    stem = safe_stem(volume_stem(source))
    return [w.target(Path(options.output), stem, i) for i, w in enumerate(config.writers)]


def run(options: RunOptions, *, progress_for: Callable[[Path], Progress] | None = None,
        report: Callable[[VolumeResult], None] | None = None, cancel: CancelToken | None = None) -> list[VolumeResult]:
    """Process every input volume; returns one result per volume (failures included)."""
    config = options.app.config
    inputs = list_inputs(options.input, options.first_only)
    backend = open_backend(options.server, threads=options.threads, app=options.app, **options.server_options)
    results: list[VolumeResult] = []
    try:
        model = backend.open(options.app.model_repository, config.model_name,
                             input_name=config.inferer.input_name, output_name=config.inferer.output_name,
                             version=config.inferer.model_version, inferer=config.inferer,
                             model_loader=config.model_loader)
        try:
            for source in inputs:
                result = _run_one(options, source, model, progress_for, cancel, multi=len(inputs) > 1)
                results.append(result)
                if report:
                    report(result)
        finally:
            model.close()
    finally:
        backend.close()
    return results


def _run_one(options: RunOptions, source: Path, model, progress_for, cancel, *, multi: bool = False) -> VolumeResult:
    start = time.perf_counter()
    config = options.app.config
    try:
        targets = planned_outputs(options, source)
        inputs_resolved = {source.resolve()}
        for target in targets:
            if target.resolve() in inputs_resolved or Path(options.input).resolve() in target.resolve().parents:
                raise VolumeError(f"{target}: the output would be written inside the input; refused.")
            if target.exists() and not options.overwrite:
                raise VolumeError(f"{target}: exists already (use --overwrite to replace it).")
        volume = read_volume(source)
        segmentation = segment_volume(volume, config, model, cancel=cancel,
                                      progress=progress_for(source) if progress_for else None,
                                      strict=options.strict)
        written = []
        for (writer, out), target in zip(segmentation.outputs, targets):
            written.append(writer.write(out, target, overwrite=True, forbid=[source]))
        if options.publish is not None and segmentation.classification is None:
            from .publish import write_publish_bundle

            # one volume: the bundle at the publish root, as the original operator wrote it;
            # several: one sub-folder per volume, named like its output
            folder = options.publish / safe_stem(volume_stem(source)) if multi else options.publish
            written += write_publish_bundle(folder, segmentation, options.app,
                                            fmt=options.publish_format, overwrite=options.overwrite)
        seconds = time.perf_counter() - start
        message = f"{source.name}: wrote {', '.join(p.name for p in written[:1])} in {seconds:.1f} s"
        if segmentation.classification is None:
            message += f"; {format_volumes(segmentation.volumes_ml)}"
        if segmentation.warnings:   # the app's expectations failed: said on the line (strict made it an error)
            message += ". WARNING: " + " WARNING: ".join(segmentation.warnings)
        return VolumeResult(source, True, message, seconds, written, segmentation)
    except Cancelled:
        raise
    except ClaraNapariError as exc:
        return VolumeResult(source, False, str(exc), time.perf_counter() - start)
    except Exception as exc:  # a bug, not a user error: report it on one line, keep the traceback in the log
        log.exception("internal error on %s", source)
        return VolumeResult(source, False, f"{source}: internal error ({type(exc).__name__}: {exc}).",
                            time.perf_counter() - start)
