"""``clara-napari`` (also ``python -m clara_napari``): the headless operator and its helpers."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .core.errors import ClaraNapariError, UsageError
from .core.masking import install_log_masking, mask, parse_header_items

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


def _add_server_args(parser: argparse.ArgumentParser, repeatable: bool = False) -> None:
    parser.add_argument("--server", action="append" if repeatable else "store",
                        help="'local' (the model runs in process), a Triton address (host:port or URL, "
                        "grpc://host:port for gRPC); default: $NVIDIA_CLARA_TRTISURI, else the app's inferer args, "
                        "else an embedded Triton server" + ("; repeat it to spread the windows over several "
                                                            "servers (docs/scale.md)" if repeatable else ""))
    parser.add_argument("--protocol", choices=["http", "grpc"], help="protocol for --server host:port")
    parser.add_argument("--no-shm", action="store_true", help="never use system shared memory with Triton")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a server or a request")
    parser.add_argument("--threads", type=int, default=None, help="model runtime threads (local and embedded)")
    parser.add_argument("--runtime", choices=["openvino", "onnxruntime", "torch"], default=None,
                        help="what runs the model locally and in the embedded server (default: openvino for ONNX "
                             "where installed, else onnxruntime; torch for TorchScript)")
    parser.add_argument("--retries", type=int, default=None, help="retries after a lost connection (default 2)")
    parser.add_argument("--ready-timeout", type=float, default=None,
                        help="seconds to wait for the server and model to be ready (default 60)")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="extra request header (e.g. an auth token), repeatable; "
                             "also from $CLARA_NAPARI_HEADERS (KEY=VALUE;KEY=VALUE)")
    parser.add_argument("--ssl-ca", help="CA certificate file for https:// and grpcs:// servers")
    parser.add_argument("--ssl-cert", help="client certificate file (with --ssl-key)")
    parser.add_argument("--ssl-key", help="client private key file (with --ssl-cert)")


def parse_headers(items: list[str], env: str = "CLARA_NAPARI_HEADERS") -> dict[str, str]:
    """``KEY=VALUE`` items (and ``$CLARA_NAPARI_HEADERS``, or ``env``) → a header dict (values masked from now on)."""
    env_items = [p for p in os.environ.get(env, "").split(";") if p.strip()]
    headers = parse_header_items(env_items, f"${env} item")
    headers.update(parse_header_items(list(items), "--header"))
    return headers


def _server_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "protocol", None):
        options["protocol"] = args.protocol
    if getattr(args, "no_shm", False):
        options["shared_memory"] = False
    if getattr(args, "timeout", None):
        options["timeout_s"] = args.timeout
    if getattr(args, "runtime", None):
        options["runtime"] = args.runtime
    if getattr(args, "retries", None) is not None:
        options["retries"] = args.retries
    if getattr(args, "ready_timeout", None):
        options["ready_timeout_s"] = args.ready_timeout
    headers = parse_headers(getattr(args, "header", []) or [])
    if headers:
        options["headers"] = headers
    for name in ("ssl_ca", "ssl_cert", "ssl_key"):
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clara-napari", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="segment every volume of the input folder (the Clara operator)")
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
    from .dicom_cli import add_dicom_args

    add_dicom_args(run)
    run.add_argument("--strict", action="store_true",
                     help="a volume that is not what the app expects (modality, intensities, result volume per "
                          "label) fails: exit 1, nothing written for it (default: a WARNING on its result line)")
    run.add_argument("--workers", type=int, default=None,
                     help="segment the volumes on a Dask LocalCluster of N worker processes (docs/scale.md)")
    run.add_argument("--scheduler", help="segment the volumes on an existing Dask cluster (tcp://host:8786)")
    _add_server_args(run, repeatable=True)

    sample = sub.add_parser("sample", help="the main job on the bundled sample: segment the brain of the T1 MRI "
                                           "and print the Dice against its reference mask")
    sample.add_argument("--output", default="clara-napari-sample",
                        help="folder for output/, publish/ and logs/ (default ./clara-napari-sample)")
    sample.add_argument("--server", help="as for run (default: the embedded Triton server where installed)")

    apps = sub.add_parser("apps", help="list the bundled apps")
    apps.add_argument("--json", action="store_true")

    new_app = sub.add_parser("new-app", help="scaffold an app folder from a bundled app")
    new_app.add_argument("folder", help="the new app folder")
    new_app.add_argument("--from", dest="source", default="brain_extraction_t1", help="app to start from")
    new_app.add_argument("--force", action="store_true", help="write into a non-empty folder")

    models = sub.add_parser("models", help="list the models a server (or an app's repository) offers")
    _add_server_args(models)
    models.add_argument("--app", help="app whose model repository the embedded server serves")

    serve = sub.add_parser("serve", help="run the embedded Triton server until Ctrl-C")
    serve.add_argument("--models", help="model repository (default: the bundled sample_data/models)")
    serve.add_argument("--http-port", type=int, default=0)
    serve.add_argument("--grpc-port", type=int, default=0)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default loopback); any other needs --tls-cert/--tls-key "
                            "or --insecure")
    serve.add_argument("--tls-cert", help="server certificate (PEM) for gRPC over TLS; HTTP then stays on loopback")
    serve.add_argument("--tls-key", help="its private key (PEM)")
    serve.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to (mutual TLS)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host without TLS (anyone who reaches it sees the data)")

    bench = sub.add_parser("bench", help="the same scanning-window job through every path: time and memory "
                                         "against the model alone (docs/benchmarks.md)")
    bench.add_argument("--workload", default="brain",
                       help="brain (T1 MRI, 160^3 windows), lung (chest CT, lung_ct app), brain-0.5mm (the MRI at "
                            "0.5 mm, 8x the voxels) or tiny (a smoke test); default brain")
    bench.add_argument("--quick", action="store_true", help="the tiny workload, one round (a smoke test)")
    bench.add_argument("--repeat", type=int, default=3, help="timing rounds, interleaved (default 3)")
    bench.add_argument("--json", dest="json_file", help="also write the results to this JSON file")
    bench.add_argument("--variants", help="comma-separated subset of floor-openvino, floor-onnxruntime (floor: "
                                          "both), local, triton-http, triton-grpc, triton-shm, monai, torch, "
                                          "json-transport (default: all the workload runs)")
    bench.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads (default: all cores)")
    bench.add_argument("--runtime", choices=["openvino", "onnxruntime"], default=None,
                       help="the runtime of the local and Triton rows (default: openvino where installed)")
    bench.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    bench.add_argument("--growth", nargs="+", metavar="JSON",
                       help="print how time and memory grow between earlier --json results (smallest first)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code. Run as the program (``argv`` None), a run stopped by a signal
    exits at once after its clean-up (see :func:`_exit_now`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_masking()   # header values and URL credentials never reach a log line
    for handler in logging.getLogger().handlers:
        # what the CLI already printed (result lines) goes to the log file only, not twice to the terminal
        handler.addFilter(lambda record: not getattr(record, "printed", False))
    handler = {"run": cmd_run, "sample": cmd_sample, "apps": cmd_apps, "models": cmd_models, "serve": cmd_serve,
               "new-app": cmd_new_app, "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"clara-napari: {'interrupted' if signum == signal.SIGINT else 'terminated'}; stopped and "
              "cleaned up.", file=sys.stderr)
        if argv is None and isinstance(exc, Stopped):
            _exit_now(128 + int(signum))
        return 128 + int(signum)
    except ClaraNapariError as exc:
        if args.debug:
            import traceback

            print(mask(traceback.format_exc()), end="", file=sys.stderr)
        print(f"clara-napari: {mask(exc)}", file=sys.stderr)
        return 2


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
        from .core.logging_config import load_logging_config

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


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal; the CLI exits with 128 + ``signum`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _exit_now(code: int) -> None:
    """Exit without the interpreter's slow teardown of every loaded library (about a second on a
    busy machine): the run's clean-up is done, the exit handlers (log files, any server or shared
    memory still registered) run here, then the process ends with ``code``."""
    import atexit

    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _stop_handler(cancel):
    """The first SIGINT/SIGTERM cancels the run and raises :class:`Stopped` in the main thread, whatever
    it waits on; the clean-up (the ``finally`` blocks: partial files, shared memory, the embedded
    server, killed rather than shut down) then runs to its end: later signals do not cut it short."""
    def handler(signum, frame):
        if cancel.cancelled:
            log.warning("already stopping; cleaning up")
            return
        cancel.cancel()
        from .core.interrupts import request_stop
        from .core.server import kill_on_stop

        request_stop()
        kill_on_stop()
        raise Stopped(signum)
    return handler


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib

    from .core.apps import resolve_app
    from .core.interrupts import clear_stop
    from .core.operator import RunOptions, check_run_folders, run
    from .core.progress import CancelToken
    from .dicom_cli import pacs_input, send_results

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
        server=_run_server(args.server) or os.environ.get("NVIDIA_CLARA_TRTISURI"), overwrite=args.overwrite,
        first_only=args.first_only, threads=args.threads, publish_format=args.publish_format,
        server_options=_server_options(args), strict=args.strict)
    check_run_folders(options)  # no output, publish or logs folder in the input: refused before anything
    log_file = _setup_run_logging(options.logs, app)
    log.info("app %s (%s, a %s config), model %s, input %s", app.name, app.config_path, config.format,
             config.model_name, options.input)
    cancel = CancelToken()
    clear_stop()
    # Ctrl-C and SIGTERM stop the run even when SIGINT was ignored on entry (a job started in the
    # background by a shell): set while a run is live, restored after it
    previous = {signum: signal.signal(signum, _stop_handler(cancel)) for signum in (signal.SIGINT, signal.SIGTERM)}
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
            from .core.dask_runs import run_on_dask

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


def _run_server(servers: list[str] | None):
    """``--server`` given once: that server; several times: the list (a fleet); never: None."""
    if not servers:
        return None
    return servers[0] if len(servers) == 1 else list(servers)


def cmd_apps(args: argparse.Namespace) -> int:
    import json

    from .core.apps import list_apps

    rows = []
    for app in list_apps():
        try:
            config = app.config
            rows.append({"name": app.name, "folder": str(app.folder), "model": config.model_name,
                         "labels": {str(k): v for k, v in config.label_names().items()}})
        except ClaraNapariError as exc:
            rows.append({"name": app.name, "folder": str(app.folder), "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            labels = ", ".join(f"{k}={v}" for k, v in row.get("labels", {}).items())
            print(f"{row['name']:<24} model {row.get('model', '?'):<24} labels {labels or '-'}  ({row['folder']})")
    return 0


def cmd_new_app(args: argparse.Namespace) -> int:
    from .core.apps import scaffold_app

    app = scaffold_app(args.folder, args.source, force=args.force)
    print(f"created app {app.folder} from {args.source}; run it with: clara-napari run --app {app.folder}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``run`` on the bundled T1 with the brain app, then the Dice against the reference mask."""
    from .core.apps import sample_path
    from .core.metrics import compare_to_reference
    from .core.volume import read_volume

    image, reference = sample_path("mr_t1"), sample_path("mr_t1_mask")
    root = Path(args.output)
    argv = ["run", "--app", "brain_extraction_t1", "--input", str(image.parent), "--output", str(root / "output"),
            "--publish", str(root / "publish"), "--logs", str(root / "logs"), "--overwrite"]
    status = cmd_run(build_parser().parse_args(argv + (["--server", args.server] if args.server else [])))
    if status != 0:
        return status
    row = compare_to_reference(read_volume(root / "output" / "mr_t1_colin27.mhd"), read_volume(reference))
    print(f"dice {row['dice']:.4f} against the reference brain mask  geometry identical: {row['same_grid']}  "
          f"volume {row['volume_ml']:.1f} ml vs reference {row['reference_ml']:.1f} ml")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .core.apps import resolve_app
    from .core.backends import open_backend

    app = resolve_app(args.app) if args.app else None
    backend = open_backend(args.server or os.environ.get("NVIDIA_CLARA_TRTISURI"), threads=args.threads,
                           app=app, **_server_options(args))
    try:
        for row in backend.list_models(app.model_repository if app else None):
            print(mask(row))
    finally:
        backend.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .core.apps import bundled_model_repository
    from .core.serve_policy import exposure_lines, serve_options
    from .core.server import EmbeddedServer

    repository = Path(args.models) if args.models else bundled_model_repository()
    options = serve_options(args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                            insecure=args.insecure)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    with EmbeddedServer(repository, http_port=args.http_port, grpc_port=args.grpc_port, **options) as server:
        print(f"Triton {server.version} serving {repository}")
        print("\n".join(exposure_lines(server, server.write_key_file())))
        print("Ctrl-C stops it.", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main_args

    return main_args(args)


if __name__ == "__main__":
    sys.exit(main())
