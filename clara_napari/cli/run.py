"""``clara-napari run``: segment every volume of the input folder (the Clara operator)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from ..core.errors import UsageError
from ..core.masking import install_log_masking, mask
from .dicom import add_dicom_args
from .options import add_server_args, named_servers, server_options
from .stopping import stop_handler

log = logging.getLogger("clara_napari")

ENV_FOLDERS = {
    "input": ("NVIDIA_CLARA_INPUT", "/input"),
    "output": ("NVIDIA_CLARA_OUTPUT", "/output"),
    "publish": ("NVIDIA_CLARA_PUBLISHING", "/publish"),
    "logs": ("NVIDIA_CLARA_LOGS", "/logs"),
}


def in_clara_container() -> bool:
    """A Clara pipeline container: some ``NVIDIA_CLARA_*`` variable is set or ``/input`` is mounted."""
    return any(k.startswith("NVIDIA_CLARA_") for k in os.environ) or Path("/input").is_dir()


def _folder(args: argparse.Namespace, key: str) -> Path:
    """A run folder: the option, else its ``NVIDIA_CLARA_*`` variable, else the Clara container's
    ``/input``… inside a container, and ``./output``, ``./publish``, ``./logs`` everywhere else
    (never the filesystem root of a user's machine)."""
    value = getattr(args, key)
    env, default = ENV_FOLDERS[key]
    if value or os.environ.get(env):
        return Path(value or os.environ[env])
    if in_clara_container():
        return Path(default)
    if key == "input":
        raise UsageError("no input: name a folder or file with --input (or set $NVIDIA_CLARA_INPUT).")
    return Path.cwd() / key


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="segment every volume of the input folder (the Clara operator)")
    add_run_arguments(run)
    run.set_defaults(handler=cmd_run)


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--app", "--config", dest="app",
                     help="bundled app name, app folder or config_inference.json "
                          "(default: $NVIDIA_CLARA_CONFIG_INFERENCE, else brain_extraction_t1)")
    for key, (env, default) in ENV_FOLDERS.items():
        run.add_argument(f"--{key}", help=f"folder (default: ${env}; else {default} in a Clara container"
                         + (", required elsewhere)" if key == "input" else f", ./{key} elsewhere)"))
    run.add_argument("--model", help="the Triton model serving the app, instead of its inferer's model_name "
                     "(an MMAR's own model file is never loaded)")
    run.add_argument("--no-publish", action="store_true", help="do not write the Render Server bundle")
    run.add_argument("--publish-format", choices=["meta", "data"], default="meta",
                     help="config.meta form: 'meta' (density/seg_masks, the operator's) or 'data' (newer)")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("--first-only", action="store_true", help="process only the first volume (the original's habit)")
    add_dicom_args(run)
    run.add_argument("--strict", action="store_true",
                     help="a volume that is not what the app expects (modality, intensities, result volume per "
                          "label) fails: exit 1, nothing written for it (default: a WARNING on its result line)")
    run.add_argument("--workers", type=int, default=None,
                     help="segment the volumes on a Dask LocalCluster of N worker processes (docs/scale.md)")
    run.add_argument("--scheduler", help="segment the volumes on an existing Dask cluster (tcp://host:8786)")
    add_server_args(run, repeatable=True)


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` as the arguments of ``clara-napari run`` (for commands that run it, like ``sample``)."""
    parser = argparse.ArgumentParser(prog="clara-napari run")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def _progress_for(enabled: bool):
    """A progress callback per volume: a tqdm bar on a terminal, plain lines otherwise."""
    def make(source: Path):
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=0, desc=source.name, unit="window", leave=False)

            def update(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()
                if done >= total:
                    bar.close()
            return update
        last = [-1]

        def lines(done: int, total: int) -> None:
            step = done * 4 // max(total, 1)
            if step != last[0]:
                last[0] = step
                log.info("%s: %d/%d windows", source.name, done, total)
        return lines
    return make if enabled else None


def _setup_run_logging(logs: Path | None, app) -> Path | None:
    if logs is None:
        return None
    app_logging = None
    if app.logging_config_path is not None:  # checked before any folder is made: it may name no code
        from ..core.logging_config import load_logging_config

        app_logging = load_logging_config(app.logging_config_path, logs=logs, app_folder=app.folder)
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create the logs folder %s (%s); logging to stderr only", logs, exc.strerror)
        return None
    if app_logging is not None:
        import logging.config as logging_config

        try:
            logging_config.dictConfig(app_logging)
        except (ValueError, TypeError, OSError) as exc:
            log.warning("%s: ignored (%s)", app.logging_config_path, exc)
    path = logs / f"clara-napari-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    install_log_masking()   # also the handlers the app's logging config gave any logger
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
        for other in root.handlers:
            if other is not handler and not isinstance(other, logging.FileHandler):
                other.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    return path


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib

    from ..core.apps import resolve_app
    from ..core.interrupts import clear_stop
    from ..core.operator import RunOptions, check_run_folders, run
    from ..core.progress import CancelToken
    from .dicom import pacs_input, send_results

    app = resolve_app(args.app)
    if args.model:
        import dataclasses

        app = dataclasses.replace(app, model=args.model)
    config = app.config  # load and check before touching any folder
    if config.model_override or config.source_model:
        print(config.model_note(), file=sys.stderr)
    stack = contextlib.ExitStack()
    fetched = stack.enter_context(pacs_input(args))   # --pacs: the series, fetched into a private folder
    options = RunOptions(
        app=app, input=fetched or _folder(args, "input"), output=_folder(args, "output"), dicom_seg=args.dicom_seg,
        publish=None if args.no_publish else _folder(args, "publish"), logs=_folder(args, "logs"),
        server=named_servers(args.server), overwrite=args.overwrite,
        first_only=args.first_only, threads=args.threads, publish_format=args.publish_format,
        server_options=server_options(args), strict=args.strict)
    check_run_folders(options)  # no output, publish or logs folder in the input: refused before anything
    log_file = _setup_run_logging(options.logs, app)
    log.info("app %s (%s, a %s config), model %s, input %s", app.name, app.config_path, config.format,
             config.model_name, options.input)
    cancel = CancelToken()
    clear_stop()
    # Ctrl-C and SIGTERM stop the run even when SIGINT was ignored on entry (a job started in the
    # background by a shell): set while a run is live, restored after it
    previous = {signum: signal.signal(signum, stop_handler(cancel)) for signum in (signal.SIGINT, signal.SIGTERM)}
    failures = unsent = 0

    def report(result) -> None:
        nonlocal failures
        message = mask(result.message)
        if result.ok:
            print(message)
            log.log(logging.WARNING if result.warnings else logging.INFO, message, extra={"printed": True})
        else:
            failures += 1
            print(f"FAILED {message}", file=sys.stderr)
            log.error(message, extra={"printed": True})

    try:
        if args.workers is not None or args.scheduler:
            from ..core.dask_runs import run_on_dask

            results = run_on_dask(options, workers=args.workers, scheduler=args.scheduler, report=report)
        else:
            results = run(options, progress_for=_progress_for(True), report=report, cancel=cancel)
        unsent = send_results(args, results)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stack.close()
    total = len(results)
    summary = f"{total - failures}/{total} volumes segmented with {app.name}"
    print(summary + (f" (log: {log_file})" if log_file else ""))
    return 0 if failures == 0 and unsent == 0 else 1
