"""``clara-napari bench`` with its parsed arguments (defined in :mod:`clara_napari.cli.bench`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .plan import FLOORS, VARIANTS, WORKLOADS
from .report import format_table, growth, targets
from .run import run_benchmark


def main_args(args: argparse.Namespace) -> int:
    """Run ``clara-napari bench`` with its parsed arguments (see :func:`clara_napari.cli.bench.add_parser`)."""
    from ..core.errors import ConfigError

    if args.growth:
        if len(args.growth) < 2:
            raise ConfigError("bench: --growth needs two or more JSON files (smallest workload first).")
        reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.growth]
        print(growth(reports))
        return 0
    name = "tiny" if args.quick else args.workload
    if name not in WORKLOADS:
        raise ConfigError(f"bench: unknown workload {name!r} (known: {', '.join(WORKLOADS)}).")
    workload = WORKLOADS[name]
    repeat = 1 if args.quick and args.repeat == 3 else args.repeat
    if repeat < 1:
        raise ConfigError("bench: --repeat must be at least 1.")
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if "floor" in variants:   # the former single floor: both now
            at = variants.index("floor")
            variants[at:at + 1] = [f for f in FLOORS if f not in variants]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"bench: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)}).")
    else:
        variants = [v for v in VARIANTS if v not in workload.skip]
    if not any(f in variants for f in FLOORS):
        variants[:0] = list(FLOORS)
    variants = [f for f in FLOORS if f in variants] + [v for v in variants if v not in FLOORS]
    threads = args.threads or os.cpu_count() or 1
    report = run_benchmark(workload, variants=variants, repeat=repeat, threads=threads, memory=not args.no_memory,
                           log=lambda text: print(text, file=sys.stderr, flush=True),
                           runtime=getattr(args, "runtime", None) or "")
    print(format_table(report))
    for line in targets(report):
        print("  " + line)
    skipped = [v for v in VARIANTS if v not in variants]
    if skipped:
        print(f"  not run: {', '.join(skipped)} (name them with --variants)")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report, indent=2) + "\n")
    return 0
