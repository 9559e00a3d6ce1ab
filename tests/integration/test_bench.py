"""``clara-napari bench``: a smoke run of the whole command on the tiny workload (no timing assertions).

It starts the real embedded Triton server, runs every variant once (monai is skipped with a note
when torch/monai are not installed) and measures each variant's memory in its own subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clara_napari.bench import VARIANTS, growth
from clara_napari.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, model_repository):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    done = subprocess.run([sys.executable, "-m", "clara_napari", "bench", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, json.loads(out.read_text())


def test_quick_bench_writes_the_documented_json(quick_run):
    _, report = quick_run
    assert report["workload"] == "tiny"
    assert {"cpu", "cores", "memory_gb", "python"} <= set(report["machine"])
    assert [row["name"] for row in report["results"]] == list(VARIANTS)
    for row in report["results"]:
        if row.get("skipped"):
            # only the optional peers may be missing
            assert row["name"] in ("monai", "torch") and "install" in row["skipped"], row
            continue
        for key in ("seconds_median", "seconds_min", "seconds_max"):
            assert isinstance(row[key], float) and row[key] >= 0
        assert row["seconds_min"] <= row["seconds_median"] <= row["seconds_max"]
        assert isinstance(row["peak_rss_mb"], (int, float)) and row["peak_rss_mb"] >= 0, row
    job = report["job"]
    assert job["windows"] > 1 and job["memory_budget_mb"] > 0


def test_every_transport_computes_what_the_local_engine_computes(quick_run):
    _, report = quick_run
    rows = {row["name"]: row for row in report["results"]}
    for name in ("triton-http", "triton-grpc", "triton-shm", "json-transport"):
        assert rows[name]["max_abs_diff_vs_local"] <= 1e-4, rows[name]
    if not rows["monai"].get("skipped"):   # MONAI places and weighs its windows its own way: close, not equal
        assert 0 <= rows["monai"]["max_abs_diff_vs_local"] <= 1.0
        assert "windows" in rows["monai"]["note"]
    if not rows["torch"].get("skipped"):   # deepbet's own TorchScript through MONAI's windows
        assert 0 <= rows["torch"]["max_abs_diff_vs_local"] <= 1.0
        assert "TorchScript" in rows["torch"]["note"]
    assert rows["floor-openvino"]["ratio_to_floor"] == 1.0 and "f32" in rows["floor-openvino"]["note"]
    assert "onnxruntime" in rows["floor-onnxruntime"]["note"]


def test_quick_bench_prints_the_table_and_the_targets(quick_run):
    done, _ = quick_run
    for name in VARIANTS:
        assert name in done.stdout
    assert "x floor" in done.stdout and "target" in done.stdout


def test_growth_between_two_reports(quick_run, tmp_path, capsys):
    _, report = quick_run
    bigger = json.loads(json.dumps(report))
    bigger["workload"] = "tiny-x2"
    bigger["job"]["voxels"] *= 2
    for row in bigger["results"]:
        if "seconds_median" in row:
            row["seconds_median"] *= 2
    text = growth([report, bigger])
    assert "voxels x2.00" in text and "local" in text
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(report))
    second.write_text(json.dumps(bigger))
    assert main(["bench", "--growth", str(first), str(second)]) == 0
    assert "tiny -> tiny-x2" in capsys.readouterr().out


def test_unknown_variant_or_workload_is_refused(capsys):
    assert main(["bench", "--variants", "floor,warp-drive", "--no-memory"]) == 2
    assert "warp-drive" in capsys.readouterr().err
    assert main(["bench", "--workload", "heart"]) == 2
    assert "heart" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_stages_of_the_local_row(model_repository):
    from clara_napari.bench import WORKLOADS, LocalRunner, end_to_end, prepare_job

    job = prepare_job(WORKLOADS["brain"], threads=2)
    runner = LocalRunner(job)
    runner.setup()
    try:
        e2e = end_to_end(WORKLOADS["brain"], runner, job)
    finally:
        runner.close()
    stages = ("read_s", "pre_s", "windows_s", "post_s", "write_s")
    assert all(e2e[k] > 0 for k in stages)
    assert sum(e2e[k] for k in stages) <= e2e["total_s"] + 0.01
    assert end_to_end(WORKLOADS["tiny"], runner, job) is None   # a resampled workload: not the app's own run
