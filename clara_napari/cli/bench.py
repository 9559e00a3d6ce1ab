"""``clara-napari bench``: its arguments; the command itself is :mod:`clara_napari.bench`, imported
only when it runs (the bench never imports the CLI back)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
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
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.command import main_args

    return main_args(args)
