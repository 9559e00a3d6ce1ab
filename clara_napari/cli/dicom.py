"""The DICOM options of ``clara-napari run``: ``--dicom-seg``, a PACS as input, sending the SEG back.

::

    clara-napari run --app lung_ct --pacs http://127.0.0.1:8042/dicom-web --study UID [--series UID] \\
        --dicom-seg --send [--send-dicom AET@host:port] --output out --no-publish

The series is fetched into a private temporary folder (removed after the run); outputs are
written to ``--output`` as for a local input and kept whatever happens to the sending.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .options import add_header_and_tls_args, parse_headers

log = logging.getLogger("clara_napari")


def add_dicom_args(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("DICOM and PACS (docs/dicom.md)")
    group.add_argument("--dicom-seg", action="store_true",
                       help="also write <output>/<name>.seg.dcm, a DICOM SEG referencing the input series")
    group.add_argument("--pacs", metavar="URL", help="DICOMweb base URL of a PACS to fetch the input from "
                       "(e.g. http://127.0.0.1:8042/dicom-web); needs --study")
    group.add_argument("--study", metavar="UID", help="Study Instance UID to fetch from --pacs")
    group.add_argument("--series", metavar="UID", help="Series Instance UID (default: the study's one image series)")
    group.add_argument("--send", action="store_true", help="store the SEG back to --pacs (STOW-RS)")
    group.add_argument("--send-dicom", action="append", default=[], metavar="AET@HOST:PORT",
                       help="store the SEG to a DICOM node with C-STORE, repeatable")
    add_header_and_tls_args(group, prefix="pacs-",
                            header_help="request header for the PACS (e.g. Authorization), repeatable; also from "
                                        "$CLARA_NAPARI_PACS_HEADERS (KEY=VALUE;KEY=VALUE); never logged",
                            ca_help="CA certificate file for an https:// PACS")
    group.add_argument("--pacs-timeout", type=float, default=30.0, help="seconds per PACS request (default 30)")


def check_dicom_args(args: argparse.Namespace) -> None:
    """Refuse contradictory options before anything runs (one sentence each)."""
    from ..core.errors import PacsError

    if args.pacs and not args.study:
        raise PacsError("--pacs needs --study (the Study Instance UID to fetch).")
    if (args.study or args.series) and not args.pacs:
        raise PacsError("--study and --series need --pacs (the DICOMweb address to fetch from).")
    if args.send and not args.pacs:
        raise PacsError("--send stores to --pacs; give --pacs (or use --send-dicom AET@host:port).")
    if (args.send or args.send_dicom) and not args.dicom_seg:
        raise PacsError("--send and --send-dicom send the DICOM SEG; add --dicom-seg.")
    if args.pacs and args.input:
        raise PacsError("--pacs and --input are two inputs; give one.")


def pacs_of(args: argparse.Namespace):
    from ..core.dicom.pacs import Pacs

    headers = parse_headers(args.pacs_header, env="CLARA_NAPARI_PACS_HEADERS")
    return Pacs(args.pacs, headers=headers, ssl_ca=args.pacs_ssl_ca, ssl_cert=args.pacs_ssl_cert,
                ssl_key=args.pacs_ssl_key, timeout_s=args.pacs_timeout)


@contextlib.contextmanager
def pacs_input(args: argparse.Namespace) -> Iterator[Path | None]:
    """The fetched series' parent folder (private, removed afterwards), or ``None`` without ``--pacs``."""
    check_dicom_args(args)
    if not args.pacs:
        yield None
        return
    pacs = pacs_of(args)
    work = Path(tempfile.mkdtemp(prefix="clara-napari-pacs-"))   # mode 0700
    try:
        folder, uid = pacs.fetch_series(args.study, args.series, work)
        print(f"fetched series {uid} ({len(list(folder.iterdir()))} instances) from {pacs.name}")
        yield folder.parent
    finally:
        shutil.rmtree(work, ignore_errors=True)


def send_results(args: argparse.Namespace, results) -> int:
    """Send each written SEG where asked; returns the number of failed sends (each printed on one line)."""
    from ..core.dicom.pacs import c_store
    from ..core.dicom.seg import SEG_SUFFIX
    from ..core.errors import ClaraNapariError

    if not (args.send or args.send_dicom):
        return 0
    pacs = pacs_of(args) if args.send else None
    failures = 0
    for result in results:
        segs = [p for p in result.outputs if p.name.endswith(SEG_SUFFIX)] if result.ok else []
        for seg in segs:
            targets = ([("pacs", pacs.name)] if pacs else []) + [("dimse", a) for a in args.send_dicom]
            for kind, where in targets:
                try:
                    uid = pacs.store(seg) if kind == "pacs" else c_store(where, seg, timeout_s=args.pacs_timeout)
                except ClaraNapariError as exc:
                    failures += 1
                    print(f"FAILED {exc} (kept {seg})", file=sys.stderr)
                    log.error("%s (kept %s)", exc, seg, extra={"printed": True})
                    continue
                line = f"{seg.name}: sent to {where} (SOP Instance UID {uid})"
                print(line)
                log.info(line, extra={"printed": True})
    return failures
