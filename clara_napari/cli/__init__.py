"""``clara-napari`` (also ``python -m clara_napari``): the headless operator and its helpers.

One module per sub-command (:mod:`.run`, :mod:`.sample`, :mod:`.apps` with ``new-app``,
:mod:`.models`, :mod:`.serve`, :mod:`.bench`); the options they share in :mod:`.options`, the
DICOM/PACS options of ``run`` in :mod:`.dicom`, the end of a run stopped by a signal in
:mod:`.stopping`.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .. import __version__
from ..core.errors import ClaraNapariError
from ..core.masking import install_log_masking, mask
from . import apps, bench, models, run, sample, serve
from .options import parse_headers
from .stopping import Stopped, exit_now

__all__ = ["build_parser", "main", "parse_headers"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clara-napari", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    sample.add_parser(sub)
    apps.add_parsers(sub)
    models.add_parser(sub)
    serve.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code. Run as the program (``argv`` None), a run stopped by a signal
    exits at once after its clean-up (see :func:`.stopping.exit_now`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_masking()   # header values and URL credentials never reach a log line
    for handler in logging.getLogger().handlers:
        # what the CLI already printed (result lines) goes to the log file only, not twice to the terminal
        handler.addFilter(lambda record: not getattr(record, "printed", False))
    try:
        return args.handler(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"clara-napari: {'interrupted' if signum == signal.SIGINT else 'terminated'}; stopped and "
              "cleaned up.", file=sys.stderr)
        if argv is None and isinstance(exc, Stopped):
            exit_now(128 + int(signum))
        return 128 + int(signum)
    except ClaraNapariError as exc:
        if args.debug:
            import traceback

            print(mask(traceback.format_exc()), end="", file=sys.stderr)
        print(f"clara-napari: {mask(exc)}", file=sys.stderr)
        return 2
