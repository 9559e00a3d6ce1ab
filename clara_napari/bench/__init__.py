"""``clara-napari bench``: the same scanning-window job through every path, side by side.

One workload (a bundled volume, its app's pre-transforms done once) gives one float32 image and
one window plan; every *variant* below runs exactly that job, interleaved round by round so that
machine noise hits all of them alike:

``floor-openvino``  OpenVINO (CPU, f32) in this process on the same windows; the sum of the
                    forward calls only (no window extraction, no stitching): the model alone, and
                    the floor every ratio is taken against.
``floor-onnxruntime`` the same with onnxruntime (the former ``floor``).
``local``           our engine (``sliding_window``) with the local backend and the default runtime
                    (``--runtime``), the app's batch size and requests in flight (what
                    ``--server local`` runs).
``triton-http``     our engine through the embedded Triton server, binary HTTP, no shared memory.
``triton-grpc``     the same over gRPC.
``triton-shm``      the same with system shared memory (HTTP for control only): the default on
                    one host.
``monai``           MONAI's ``sliding_window_inference`` with the same window, overlap, blending,
                    padding value and the ``local`` predictor (same runtime and threads); skipped
                    with a note when torch/monai are missing (``pip install -e ".[bench]"``).
``torch``           MONAI's natural path: ``sliding_window_inference`` calling the TorchScript
                    network (deepbet's own ``model.pt``, ``sample_data/torchscript``) in torch;
                    brain workloads only (the lung model has no TorchScript file).
``json-transport``  our engine through the embedded server with the inputs JSON-encoded
                    (``binary_data=False``; outputs binary), as MONAI Deploy's Triton client sends
                    them.

Memory: each variant also runs once in a fresh subprocess (the Triton variants with a fresh
embedded server of their own). Its *baseline* is that process's resident set after the imports,
the input loaded, the model (or connection) opened and one warm-up window predicted; the peak is
the kernel's high-water mark (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` right after the
baseline) during one run of the job. For the Triton variants the server's processes
(``tritonserver`` and its python-backend stub) are measured the same way and added
(``peak_rss_server_mb``). The target compares that peak with the input as
float32 plus the output accumulator.

End to end: for ``local``, the Triton rows and ``torch``, one more run of the whole app on the
workload's volume (read → pre-transforms → windows → post-transforms → write), timed per stage
(``end_to_end`` in the JSON); not for the resampled workloads.

``python -m clara_napari.bench`` is the same command; ``--probe`` is its internal memory probe.

The modules: :mod:`.plan` (workloads, the job), :mod:`.runners` (the floors and ``local``),
:mod:`.triton` (the Triton rows), :mod:`.peers` (``monai``, ``torch``), :mod:`.variants` (name →
runner), :mod:`.memory` (the per-variant memory probe), :mod:`.run` (one benchmark),
:mod:`.report` (table, targets, growth) and :mod:`.command` (the ``clara-napari bench`` command).
"""
from __future__ import annotations

from .command import main_args
from .plan import (
           END_TO_END,
           FLOORS,
           TRITON_VARIANTS,
           VARIANTS,
           WORKLOADS,
           Job,
           ServerInfo,
           Skip,
           Workload,
           prepare_job,
)
from .report import format_table, growth, targets
from .run import Result, end_to_end, machine_info, run_benchmark
from .runners import EngineRunner, FloorRunner, LocalRunner, Runner
from .variants import make_runner

__all__ = ["END_TO_END", "FLOORS", "TRITON_VARIANTS", "VARIANTS", "WORKLOADS", "EngineRunner", "FloorRunner", "Job",
           "LocalRunner", "Result", "Runner", "ServerInfo", "Skip", "Workload", "end_to_end", "format_table", "growth",
           "machine_info", "main_args", "make_runner", "prepare_job", "run_benchmark", "targets"]
