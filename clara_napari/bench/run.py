"""One benchmark: the variants' set-up, interleaved timing rounds, end-to-end runs and memory probes."""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .memory import memory_in_subprocess
from .peers import TorchRunner
from .plan import (
    END_TO_END,
    FLOORS,
    TORCHSCRIPT,
    TRITON_VARIANTS,
    Job,
    ServerInfo,
    Skip,
    Workload,
    prepare_job,
)
from .runners import Runner
from .triton import embedded_server
from .variants import make_runner


def end_to_end(workload: Workload, runner: Runner, job: Job) -> dict | None:
    """One run of the whole app with ``runner``'s model: read → pre → windows → post → write, seconds each.

    Through the project's pipeline (``segment_volume``) and the app's writers, as ``clara-napari run``
    does; the torch row uses the local backend's TorchScript runtime on deepbet's ``model.pt``.
    """
    from ..core.apps import resolve_app, sample_data_dir
    from ..core.pipeline import segment_volume
    from ..core.volume import read_volume

    if workload.resample_mm or workload.roi:
        return None
    model = getattr(runner, "model", None)
    if isinstance(runner, TorchRunner):
        from .runners import open_model

        model = open_model(job, runtime="torch", repository=sample_data_dir() / TORCHSCRIPT)
    if model is None or not hasattr(model, "spec"):
        return None
    app = resolve_app(workload.app)
    start = time.perf_counter()
    volume = read_volume(sample_data_dir() / workload.input)
    read = time.perf_counter() - start
    segmentation = segment_volume(volume, app.config, model)
    timings = segmentation.timings
    with tempfile.TemporaryDirectory(prefix="clara-napari-bench-e2e-") as tmp:
        clock = time.perf_counter()
        for index, (writer, out) in enumerate(segmentation.outputs):
            writer.write(out, writer.target(Path(tmp), "bench", index), overwrite=True)
        write = time.perf_counter() - clock
    total = time.perf_counter() - start
    return {"read_s": round(read, 3), "pre_s": round(timings.get("pre_transforms", 0.0), 3),
            "windows_s": round(timings.get("inference", 0.0), 3),
            "post_s": round(timings.get("post_transforms", 0.0) + timings.get("restore_geometry", 0.0), 3),
            "write_s": round(write, 3), "total_s": round(total, 3), "model": model.description}


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    note: str = ""
    skipped: str = ""
    max_abs_diff_vs_local: float | None = None
    memory: dict = field(default_factory=dict)
    end_to_end: dict | None = None

    def row(self, floor: float | None) -> dict:
        row: dict[str, Any] = {"name": self.name}
        if self.skipped:
            row["skipped"] = self.skipped
            return row
        if self.times:
            median = statistics.median(self.times)
            row.update(seconds_median=round(median, 4), seconds_min=round(min(self.times), 4),
                       seconds_max=round(max(self.times), 4), runs=len(self.times),
                       ratio_to_floor=round(median / floor, 3) if floor else None)
        row["peak_rss_mb"] = self.memory.get("peak_rss_mb")
        for key in ("peak_rss_client_mb", "peak_rss_server_mb", "baseline_rss_mb"):
            if key in self.memory:
                row[key] = self.memory[key]
        if self.memory.get("error"):
            row["memory_error"] = self.memory["error"]
        if self.max_abs_diff_vs_local is not None:
            row["max_abs_diff_vs_local"] = self.max_abs_diff_vs_local
        if self.end_to_end:
            row["end_to_end"] = self.end_to_end
        row["note"] = self.note
        return row


def machine_info(server: ServerInfo | None) -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for module in ("numpy", "openvino", "onnxruntime", "tritonclient", "torch", "monai"):
        with contextlib.suppress(PackageNotFoundError):
            versions[module] = version(module)
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": None,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}
    if server is not None:
        info["triton"] = server.version
    return info


def run_benchmark(workload: Workload, *, variants: list[str], repeat: int, threads: int, memory: bool = True,
                  log: Callable[[str], None] = print, runtime: str = "") -> dict:
    started = time.perf_counter()
    load_before = os.getloadavg()
    job = prepare_job(workload, threads, runtime)
    plan = job.plan
    log(f"workload {workload.name}: {workload.description}")
    log(f"  image {list(job.image.shape)} float32 ({job.input_mb:.1f} MB), {len(plan)} windows of {list(job.roi)}, "
        f"overlap {job.overlap}, {job.blending}, batch {job.batch_size}, {job.in_flight} in flight, "
        f"{threads} threads")
    with embedded_server(job, any(v in TRITON_VARIANTS for v in variants)) as server:
        results = {name: Result(name) for name in variants}
        runners: dict[str, Runner] = {}
        for name in variants:
            runner = make_runner(name, job, server)
            try:
                runner.setup()
            except Skip as exc:
                results[name].skipped = str(exc)
                log(f"  {name}: skipped ({exc})")
                continue
            runners[name] = runner
            results[name].note = runner.note
        # the timing rounds, interleaved; each round starts one variant later
        order = list(runners)
        reference = None
        for round_ in range(repeat):
            shift = round_ % max(1, len(order))
            for name in order[shift:] + order[:shift]:
                gc.collect()
                seconds, out = runners[name].run()
                results[name].times.append(seconds)
                if out is not None and round_ == 0:   # round 0 runs the floors, then local, then the others
                    if name == "local":
                        reference = out
                    elif reference is not None and out.shape == reference.shape:
                        results[name].max_abs_diff_vs_local = float(np.max(np.abs(out - reference)))
                del out
            log(f"  round {round_ + 1}/{repeat}: " + ", ".join(f"{n} {results[n].times[-1]:.2f}s" for n in order))
        reference = None
        for name in order:
            if name in END_TO_END:
                gc.collect()
                results[name].end_to_end = end_to_end(workload, runners[name], job)
                if results[name].end_to_end:
                    e2e = results[name].end_to_end
                    log(f"  end to end {name}: {e2e['total_s']:.2f}s (read {e2e['read_s']:.2f}, pre {e2e['pre_s']:.2f}, "
                        f"windows {e2e['windows_s']:.2f}, post {e2e['post_s']:.2f}, write {e2e['write_s']:.2f})")
        for runner in runners.values():
            runner.close()
        runners.clear()
        gc.collect()
        # memory: one fresh process per variant, one run each
        if memory:
            with tempfile.TemporaryDirectory(prefix="clara-napari-bench-") as tmp:
                image_file = Path(tmp) / "image.npy"
                np.save(image_file, job.image)
                for name in order:
                    timeout = max(300.0, 20 * max(results[name].times))
                    try:
                        results[name].memory = memory_in_subprocess(name, job, image_file, timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        results[name].memory = {"error": str(exc)}
                    log(f"  memory {name}: {results[name].memory.get('peak_rss_mb', '?')} MB above the baseline")
    floor = next((statistics.median(results[name].times) for name in FLOORS
                  if name in results and results[name].times), None)
    machine = machine_info(server)
    machine["load_average_before"] = [round(v, 2) for v in load_before]
    machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "workload": workload.name,
        "machine": machine,
        "floor": next((name for name in FLOORS if name in results and results[name].times), None),
        "job": {"description": workload.description, "runtime": job.runtime or "default", "image_shape": list(job.image.shape), "voxels": job.voxels,
                "windows": len(plan), "roi": list(job.roi), "overlap": job.overlap, "blending": job.blending,
                "batch_size": job.batch_size, "in_flight": job.in_flight, "threads": threads,
                "model": job.model_name, "input_mb": round(job.input_mb, 1),
                "accumulator_mb": round(job.accumulator_mb, 1),
                "memory_budget_mb": round(1.5 * (job.input_mb + job.accumulator_mb), 1),
                "repeat": repeat, "wall_s": round(time.perf_counter() - started, 1)},
        "results": [results[name].row(floor) for name in variants],
    }
