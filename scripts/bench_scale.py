"""Scale-out figures for docs/scale.md: 1 vs 2 vs 4 Triton endpoints, 1 vs 2 Dask workers.

    PYTHONPATH=. python scripts/bench_scale.py [--delay 0.05] [--rounds 2] [--json out.json]

The model is latency-bound (a real Triton python-backend model that waits ``--delay`` seconds
per request, one instance per server: tests/helpers/scale_models.py), so the cores of a small machine
are not what limits the run; the figures show what the client-side spreading and the Dask
layer cost on top of the model's own time. Everything runs on loopback; every run is bounded.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from clara_napari.core.apps import resolve_app  # noqa: E402
from clara_napari.core.backends.fleet import FleetModel  # noqa: E402
from clara_napari.core.triton.address import parse_address  # noqa: E402
from clara_napari.core.triton.embedded import EmbeddedServer  # noqa: E402
from clara_napari.core.triton.model import TritonModel  # noqa: E402
from clara_napari.core.windows import plan_windows, sliding_window  # noqa: E402

from helpers.scale_models import MODEL, write_latency_app, write_latency_model, write_volumes  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_fleet(work: Path, delay: float, rounds: int, shape=(1, 64, 64, 96), roi=(16, 16, 16)) -> dict:
    repository = work / "fleet_models"
    write_latency_model(repository, delay_s=delay, instances=1)
    image = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
    windows = len(plan_windows(shape[1:], roi, 0.0))
    servers = [EmbeddedServer(repository, threads=1) for _ in range(4)]
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: s.start(), servers))
    rows = {}
    try:
        reference = None
        times: dict[int, list[float]] = {1: [], 2: [], 4: []}
        for _ in range(rounds):
            for count in (1, 2, 4):
                models = [TritonModel(parse_address(s.http_url), MODEL, in_flight=2) for s in servers[:count]]
                model = models[0] if count == 1 else FleetModel(models)
                in_flight = 2 if count == 1 else model.requests_in_flight
                try:
                    start = time.perf_counter()
                    result = sliding_window(image, model, roi, overlap=0.0, blending="constant", in_flight=in_flight)
                    times[count].append(time.perf_counter() - start)
                finally:
                    model.close()
                if reference is None:
                    reference = result
                assert np.array_equal(result, reference), "the fleet changed the result"
        for count, values in times.items():
            best = min(values)
            ideal = windows * delay / count
            rows[count] = {"wall_s": round(best, 3), "ideal_s": round(ideal, 3),
                           "overhead_ms_per_window": round(1000 * (best - ideal) / windows, 2)}
        for count in rows:
            rows[count]["ratio"] = round(rows[count]["wall_s"] / rows[1]["wall_s"], 3)
    finally:
        for server in servers:
            server.stop()
    return {"windows": windows, "delay_s": delay, "endpoints": rows, "load": load()}


def bench_dask(work: Path, delay: float, rounds: int, studies: int = 8) -> dict:
    from clara_napari.core.dask_runs import local_cluster, run_on_dask
    from clara_napari.core.operator import RunOptions, run

    app = resolve_app(write_latency_app(work / "dask_app", delay_s=delay, instances=2, in_flight=1))
    inputs = work / "dask_input"
    write_volumes(inputs, studies, shape=(32, 40, 48))
    windows = 3 * 3 * 4
    rows = {}
    with EmbeddedServer(app.model_repository, threads=1) as server:
        times: dict[str, list[float]] = {"serial": [], "1": [], "2": []}
        starts: dict[str, list[float]] = {"1": [], "2": []}
        for round_ in range(rounds):
            out = work / f"serial_{round_}"
            start = time.perf_counter()
            results = run(RunOptions(app=app, input=inputs, output=out, server=server.http_url))
            times["serial"].append(time.perf_counter() - start)
            assert all(r.ok for r in results)
            for workers in (1, 2):
                start = time.perf_counter()
                with local_cluster(workers) as cluster:
                    starts[str(workers)].append(time.perf_counter() - start)
                    out = work / f"dask_{workers}_{round_}"
                    start = time.perf_counter()
                    results = run_on_dask(RunOptions(app=app, input=inputs, output=out, server=server.http_url),
                                          scheduler=cluster.scheduler_address, timeout_s=600)
                    times[str(workers)].append(time.perf_counter() - start)
                assert all(r.ok for r in results)
                for path in sorted((work / f"serial_{round_}").iterdir()):
                    assert path.read_bytes() == (out / path.name).read_bytes(), path.name
        ideal_one = studies * windows * delay
        for key, values in times.items():
            best = min(values)
            ideal = ideal_one / (2 if key == "2" else 1)
            rows[key] = {"wall_s": round(best, 3), "ideal_s": round(ideal, 3),
                         "overhead_s_per_study": round((best - ideal) / studies, 3)}
            if key in starts:
                rows[key]["cluster_start_s"] = round(min(starts[key]), 2)
        rows["2"]["ratio_to_1"] = round(rows["2"]["wall_s"] / rows["1"]["wall_s"], 3)
    return {"studies": studies, "windows_per_study": windows, "delay_s": delay, "runs": rows, "load": load()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the model waits per request")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (the best is kept)")
    parser.add_argument("--only", choices=["fleet", "dask"], help="one half only")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = {"cpus": os.cpu_count(), "load_before": load()}
    with tempfile.TemporaryDirectory(prefix="clara-scale-bench-") as tmp:
        if args.only in (None, "fleet"):
            figures["fleet"] = bench_fleet(Path(tmp), args.delay, args.rounds)
            print(json.dumps(figures["fleet"], indent=1), flush=True)
        if args.only in (None, "dask"):
            figures["dask"] = bench_dask(Path(tmp), args.delay, args.rounds)
            print(json.dumps(figures["dask"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
