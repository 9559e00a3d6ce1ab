"""``clara-napari`` (also ``python -m clara_napari``): the headless operator and its helpers."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .core.errors import ClaraNapariError

log = logging.getLogger("clara_napari")

ENV_FOLDERS = {
    "input": ("NVIDIA_CLARA_INPUT", "/input"),
    "output": ("NVIDIA_CLARA_OUTPUT", "/output"),
    "publish": ("NVIDIA_CLARA_PUBLISHING", "/publish"),
    "logs": ("NVIDIA_CLARA_LOGS", "/logs"),
}


def _folder(args: argparse.Namespace, key: str) -> Path:
    value = getattr(args, key)
    env, default = ENV_FOLDERS[key]
    return Path(value or os.environ.get(env) or default)


def _add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="'local' (the model runs in process), a Triton address (host:port or URL, "
                        "grpc://host:port for gRPC); default: $NVIDIA_CLARA_TRTISURI, else the app's inferer args, "
                        "else an embedded Triton server")
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


def parse_headers(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items (and ``$CLARA_NAPARI_HEADERS``) → a header dict."""
    from .core.errors import ServerError

    env = [p for p in os.environ.get("CLARA_NAPARI_HEADERS", "").split(";") if p.strip()]
    headers = {}
    for item in env + list(items):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ServerError(f"header {item!r} is not KEY=VALUE.")
        headers[key.strip()] = value.strip()
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
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="segment every volume of the input folder (the Clara operator)")
    run.add_argument("--app", "--config", dest="app",
                     help="bundled app name, app folder or config_inference.json "
                          "(default: $NVIDIA_CLARA_CONFIG_INFERENCE, else brain_extraction_t1)")
    for key, (env, default) in ENV_FOLDERS.items():
        run.add_argument(f"--{key}", help=f"folder (default: ${env}, else {default})")
    run.add_argument("--no-publish", action="store_true", help="do not write the Render Server bundle")
    run.add_argument("--publish-format", choices=["meta", "data"], default="meta",
                     help="config.meta form: 'meta' (density/seg_masks, the operator's) or 'data' (newer)")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("--first-only", action="store_true", help="process only the first volume (the original's habit)")
    _add_server_args(run)

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
    serve.add_argument("--host", default="127.0.0.1")

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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # what the CLI already printed (result lines) goes to the log file only, not twice to the terminal
        handler.addFilter(lambda record: not getattr(record, "printed", False))
    handler = {"run": cmd_run, "apps": cmd_apps, "models": cmd_models, "serve": cmd_serve,
               "new-app": cmd_new_app, "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("clara-napari: interrupted.", file=sys.stderr)
        return 130
    except ClaraNapariError as exc:
        if args.debug:
            raise
        print(f"clara-napari: {exc}", file=sys.stderr)
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
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create the logs folder %s (%s); logging to stderr only", logs, exc.strerror)
        return None
    if app.logging_config_path is not None:
        import json
        import logging.config as logging_config

        try:
            logging_config.dictConfig(json.loads(app.logging_config_path.read_text()))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            log.warning("%s: ignored (%s)", app.logging_config_path, exc)
    path = logs / f"clara-napari-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
        for other in root.handlers:
            if other is not handler and not isinstance(other, logging.FileHandler):
                other.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from .core.apps import resolve_app
    from .core.operator import RunOptions, run
    from .core.progress import CancelToken

    app = resolve_app(args.app)
    config = app.config  # load and check before touching any folder
    options = RunOptions(
        app=app, input=_folder(args, "input"), output=_folder(args, "output"),
        publish=None if args.no_publish else _folder(args, "publish"), logs=_folder(args, "logs"),
        server=args.server or os.environ.get("NVIDIA_CLARA_TRTISURI"), overwrite=args.overwrite,
        first_only=args.first_only, threads=args.threads, publish_format=args.publish_format,
        server_options=_server_options(args))
    log_file = _setup_run_logging(options.logs, app)
    log.info("app %s (%s), model %s, input %s", app.name, app.config_path, config.model_name, options.input)
    cancel = CancelToken()

    def on_terminate(signum, frame):
        cancel.cancel()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_terminate)
    failures = 0

    def report(result) -> None:
        nonlocal failures
        if result.ok:
            print(result.message)
            log.info(result.message, extra={"printed": True})
        else:
            failures += 1
            print(f"FAILED {result.message}", file=sys.stderr)
            log.error(result.message, extra={"printed": True})

    try:
        results = run(options, progress_for=_progress_for(True), report=report, cancel=cancel)
    finally:
        signal.signal(signal.SIGTERM, previous)
    total = len(results)
    summary = f"{total - failures}/{total} volumes segmented with {app.name}"
    print(summary + (f" (log: {log_file})" if log_file else ""))
    return 0 if failures == 0 else 1


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


def cmd_models(args: argparse.Namespace) -> int:
    from .core.apps import resolve_app
    from .core.backends import open_backend

    app = resolve_app(args.app) if args.app else None
    backend = open_backend(args.server or os.environ.get("NVIDIA_CLARA_TRTISURI"), threads=args.threads,
                           app=app, **_server_options(args))
    try:
        for row in backend.list_models(app.model_repository if app else None):
            print(row)
    finally:
        backend.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .core.apps import bundled_model_repository
    from .core.server import EmbeddedServer

    repository = Path(args.models) if args.models else bundled_model_repository()

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    with EmbeddedServer(repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port) as server:
        print(f"Triton {server.version} serving {repository}")
        print(f"  HTTP    {server.http_url}")
        print(f"  gRPC    {server.grpc_url}")
        print(f"  metrics {server.metrics_url}")
        print(f"  models  {', '.join(server.model_names())}")
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
