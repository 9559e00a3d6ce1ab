"""The headless operator: every volume of an input folder → outputs (and publish bundle).

This is what ``clara-napari run`` (and a Clara pipeline) drives. One backend and one model
handle serve the whole folder; each volume succeeds or fails on its own, and a failure never
leaves a partial file behind.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .apps import App
from .atomic import Transaction, remove_stale_partials
from .errors import Cancelled, ClaraNapariError, ConfigError, OutputError, VolumeError
from .expectations import format_volumes
from .output_plan import check_folders, companions, distinct_stems
from .pipeline import Segmentation
from .progress import CancelToken, Progress
from .resources import check_run_memory
from .session import Session
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
    #: also write ``<output>/<name>.seg.dcm`` (DICOM series inputs only)
    dicom_seg: bool = False
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


def planned_outputs(options: RunOptions, source: Path, stem: str | None = None) -> list[Path]:
    """The files the writers produce for ``source`` (headers; a ``.mhd`` also writes its ``.raw``).

    A writer's ``write_path`` is taken inside the output folder; one that leads outside is refused.
    """
    config = options.app.config
    stem = stem or safe_stem(volume_stem(source))
    output = Path(options.output)
    root = output.resolve()
    targets = []
    for i, writer in enumerate(config.writers):
        target = writer.target(output, stem, i)
        if not target.is_absolute() and bool(getattr(writer, "write_path", "")):
            target = output / target
        if root not in target.resolve().parents:
            raise OutputError(f"{options.app.config_path}: writers[{i}].args.write_path leads to {target.parent}, "
                              f"outside the output folder {output}; refused.")
        targets.append(target)
    if options.dicom_seg:
        from .dicom.seg import seg_path

        targets.append(seg_path(output, stem))
    return targets


def check_run(options: RunOptions) -> None:
    """Refuse, before any work, a config that names no model or has a writer aiming outside ``--output``."""
    config = options.app.config
    config.require_model()
    for index, writer in enumerate(config.writers):
        try:
            writer.target(Path(options.output), "check", index)
        except ConfigError as exc:
            raise ConfigError(exc.detail, path=exc.json_path, file=str(config.file)) from None


def check_run_folders(options: RunOptions) -> None:
    """Output, publish and logs folders apart from the input (before anything is read or made)."""
    check_folders(options.input, {"output": options.output, "publish": options.publish, "logs": options.logs})


def plan_run(options: RunOptions, inputs: list[Path]) -> dict[Path, str]:
    """Check the folders, then give each input its own output name (see :mod:`.output_plan`)."""
    check_run_folders(options)
    multi = len(inputs) > 1
    compress = [bool(getattr(w, "compress", False)) for w in options.app.config.writers] + [False] * options.dicom_seg

    def files_for(stem: str) -> list[Path]:
        files = [f for target, z in zip(planned_outputs(options, inputs[0], stem), compress, strict=True)
                 for f in companions(target, z)]
        if options.publish is not None and multi:  # the per-volume folder and what goes in it
            from .publish import bundle_names

            folder = Path(options.publish) / stem
            files += [folder] + [folder / name for name in bundle_names(stem)]
        return files

    return distinct_stems(inputs, files_for)


def _remove_stale_partials(options: RunOptions, stems: dict[Path, str], *, multi: bool) -> None:
    """What killed runs left while writing (also where this run will not write: a volume that is
    complete already); a live process's staging folders are never touched."""
    folders = {t.parent for source, stem in stems.items() for t in planned_outputs(options, source, stem)}
    if options.publish is not None:
        folders.add(Path(options.publish))
        if multi:
            folders.update(Path(options.publish) / stem for stem in stems.values())
    for path in remove_stale_partials(*folders):  # a commit under way when its process died is finished first
        log.info("removed %s, left by a process that is gone", path)


def run(options: RunOptions, *, progress_for: Callable[[Path], Progress] | None = None,
        report: Callable[[VolumeResult], None] | None = None, cancel: CancelToken | None = None) -> list[VolumeResult]:
    """Process every input volume; returns one result per volume (failures included)."""
    config = options.app.config
    check_run(options)
    check_run_folders(options)
    inputs = list_inputs(options.input, options.first_only)
    seg_writer = next((w.config_name for w in config.writers if getattr(w, "wants_app", False)), None)
    if options.dicom_seg or seg_writer:
        from .dicom.writer import require_dicom_source

        for source in inputs:
            require_dicom_source(source, "--dicom-seg" if options.dicom_seg else f"the writer {seg_writer}")
    stems = plan_run(options, inputs)
    _remove_stale_partials(options, stems, multi=len(inputs) > 1)
    if options.publish is not None:
        from .publish import render_config_text

        render_config_text(options.app)  # the app's config_render.json is checked before any model runs
    results: list[VolumeResult] = []
    with open_session(options) as session:
        for source in inputs:
            result = run_one(options, source, session, progress_for, cancel, multi=len(inputs) > 1,
                              stem=stems[source])
            results.append(result)
            if report:
                report(result)
    return results


def open_session(options: RunOptions) -> Session:
    """The run's session: the server :func:`~clara_napari.core.session.choose_server` picks from
    ``options.server`` (``runtime`` may ride in ``server_options``), opened."""
    transport = dict(options.server_options)
    runtime = transport.pop("runtime", None)
    return Session(options.app, options.server, threads=options.threads, runtime=runtime, transport=transport)


def run_one(options: RunOptions, source: Path, session: Session, progress_for, cancel, *, multi: bool = False,
             stem: str | None = None) -> VolumeResult:
    start = time.perf_counter()
    config = options.app.config
    try:
        stem = stem or safe_stem(volume_stem(source))
        targets = planned_outputs(options, source, stem)
        inputs_resolved = {source.resolve()}
        for target in targets:
            if target.resolve() in inputs_resolved or Path(options.input).resolve() in target.resolve().parents:
                raise VolumeError(f"{target}: the output would be written inside the input; refused.")
            if (target.exists() or target.is_symlink()) and not options.overwrite:
                raise VolumeError(f"{target}: exists already (use --overwrite to replace it).")
        volume = read_volume(source, before_voxels=lambda header: check_run_memory(header, config, session.model))
        segmentation = session.segment(volume, cancel=cancel, progress=progress_for(source) if progress_for else None,
                                       strict=options.strict)
        # one volume's outputs and its publish bundle are staged, then put in place together:
        # all of them land or none does (and, without --overwrite, none replaces a file)
        with Transaction(overwrite=options.overwrite, forbid=[source]) as txn:
            written = []
            # targets: one per writer, then the DICOM SEG's when asked for (written below)
            for (writer, out), target in zip(segmentation.outputs, targets, strict=False):
                writer.write(out, txn.path(target), overwrite=True, forbid=[source], app=options.app,
                             model=segmentation.model)
                written.append(target)
            if options.dicom_seg:
                from .dicom.writer import write_app_seg

                write_app_seg(segmentation.labels, options.app, txn.path(targets[-1]), model=segmentation.model)
                written.append(targets[-1])
            if options.publish is not None and segmentation.classification is None:
                from .publish import write_publish_bundle

                # one volume: the bundle at the publish root, as the original operator wrote it;
                # several: one sub-folder per volume, named like its output
                folder = Path(options.publish) / stem if multi else Path(options.publish)
                written += write_publish_bundle(folder, segmentation, options.app, fmt=options.publish_format,
                                                overwrite=options.overwrite, name=stem, transaction=txn)
            txn.commit()
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
