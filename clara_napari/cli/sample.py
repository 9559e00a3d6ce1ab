"""``clara-napari sample``: the main job on the bundled T1 MRI, then the Dice against its reference mask."""
from __future__ import annotations

import argparse
from pathlib import Path

from .run import cmd_run, parse_run_args


def add_parser(sub) -> None:
    sample = sub.add_parser("sample", help="the main job on the bundled sample: segment the brain of the T1 MRI "
                                           "and print the Dice against its reference mask")
    sample.add_argument("--output", default="clara-napari-sample",
                        help="folder for output/, publish/ and logs/ (default ./clara-napari-sample)")
    sample.add_argument("--server", help="as for run (default: the embedded Triton server where installed)")
    sample.set_defaults(handler=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """``run`` on the bundled T1 with the brain app, then the Dice against the reference mask."""
    from ..core.apps import sample_path
    from ..core.metrics import compare_to_reference
    from ..core.volume import read_volume

    image, reference = sample_path("mr_t1"), sample_path("mr_t1_mask")
    root = Path(args.output)
    argv = ["--app", "brain_extraction_t1", "--input", str(image.parent), "--output", str(root / "output"),
            "--publish", str(root / "publish"), "--logs", str(root / "logs"), "--overwrite"]
    status = cmd_run(parse_run_args(argv + (["--server", args.server] if args.server else [])))
    if status != 0:
        return status
    row = compare_to_reference(read_volume(root / "output" / "mr_t1_colin27.mhd"), read_volume(reference))
    print(f"dice {row['dice']:.4f} against the reference brain mask  geometry identical: {row['same_grid']}  "
          f"volume {row['volume_ml']:.1f} ml vs reference {row['reference_ml']:.1f} ml")
    return 0
