"""The bench's report as text: the table, the targets checked, the growth between two reports."""
from __future__ import annotations

from .plan import FLOORS


def format_table(report: dict) -> str:
    job = report["job"]
    lines = [(f"{report['workload']}: {job['windows']} windows of {job['roi']} on {job['image_shape']} "
              f"({job['voxels'] / 1e6:.1f} M voxels); memory budget {job['memory_budget_mb']} MB = 1.5 x "
              f"(input {job['input_mb']} MB + accumulator {job['accumulator_mb']} MB)"),
             f"{'variant':<17} {'median s':>9} {'min s':>8} {'max s':>8} {'x floor':>8} {'peak MB':>8}  note",
             "-" * 100]
    for row in report["results"]:
        if row.get("skipped"):
            lines.append(f"{row['name']:<17} {'skipped':>9}  {row['skipped']}")
            continue
        ratio = row.get("ratio_to_floor")
        peak = row.get("peak_rss_mb")
        peak_text = f"{peak:.0f}" if isinstance(peak, (int, float)) else "-"
        if row.get("peak_rss_server_mb"):
            peak_text += f" ({row['peak_rss_client_mb']:.0f}+{row['peak_rss_server_mb']:.0f})"
        lines.append(f"{row['name']:<17} {row['seconds_median']:>9.3f} {row['seconds_min']:>8.3f} "
                     f"{row['seconds_max']:>8.3f} {ratio if ratio is not None else '-':>8} {peak_text:>8}  "
                     f"{row.get('note', '')}")
    e2e = [row for row in report["results"] if row.get("end_to_end")]
    if e2e:
        lines.append(f"end to end (one run; s)  {'read':>6} {'pre':>6} {'windows':>8} {'post':>6} {'write':>6} {'total':>6}")
        for row in e2e:
            t = row["end_to_end"]
            lines.append(f"  {row['name']:<22} {t['read_s']:>6.2f} {t['pre_s']:>6.2f} {t['windows_s']:>8.2f} "
                         f"{t['post_s']:>6.2f} {t['write_s']:>6.2f} {t['total_s']:>6.2f}")
    return "\n".join(lines)


def targets(report: dict) -> list[str]:
    """The issue's targets, checked on this report's numbers."""
    rows = {r["name"]: r for r in report["results"] if "seconds_median" in r}
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    floor = rows.get("floor-openvino", {}).get("seconds_median")
    triton = [rows[n] for n in ("triton-http", "triton-grpc", "triton-shm") if n in rows]
    best = min(triton, key=lambda r: r["seconds_median"]) if triton else None
    lung = report["workload"] == "lung"
    if floor and "floor-onnxruntime" in rows:
        ratio = rows["floor-onnxruntime"]["seconds_median"] / floor
        out.append(f"floor-onnxruntime {ratio:.2f} x floor-openvino (reported; expected >= 2.5 on the brain)")
    if floor and "local" in rows:
        ratio = rows["local"]["seconds_median"] / floor
        out.append(f"local {ratio:.2f} x floor-openvino (target <= 1.15): {verdict(ratio <= 1.15)}")
    if floor and best:
        ratio = best["seconds_median"] / floor
        limit = 2.0 if lung else 1.3
        out.append(f"best Triton path ({best['name']}) {ratio:.2f} x floor-openvino (target <= {limit}): "
                   f"{verdict(ratio <= limit)}")
    e2e = rows.get("local", {}).get("end_to_end")
    if floor and e2e:
        ratio = e2e["total_s"] / floor
        out.append(f"local end to end {e2e['total_s']:.2f} s = {ratio:.2f} x floor-openvino (target <= 1.6): "
                   f"{verdict(ratio <= 1.6)}")
    if "local" in rows and "monai" in rows:
        ratio = rows["local"]["seconds_median"] / rows["monai"]["seconds_median"]
        out.append(f"local {ratio:.2f} x monai (target <= 1.0): {verdict(ratio <= 1.0)}")
    if best and "json-transport" in rows:
        ratio = rows["json-transport"]["seconds_median"] / best["seconds_median"]
        out.append(f"json-transport {ratio:.1f} x the best Triton path (target >= 6): {verdict(ratio >= 6)}")
    budget = report["job"]["memory_budget_mb"]
    for row in report["results"]:
        peak = row.get("peak_rss_mb")
        if isinstance(peak, (int, float)) and row["name"] not in FLOORS:
            out.append(f"{row['name']} peak {peak:.0f} MB above the baseline, {peak / budget * 1.5:.2f} x "
                       f"(input + accumulator) (target <= 1.5): {verdict(peak <= budget)}")
    return out


def growth(reports: list[dict]) -> str:
    """How time and memory grow from the first report to each next one (same variants).

    Time is compared per window (the work is the windows); memory as the marginal MB per million
    voxels between the two sizes, next to the output accumulator's own MB per million voxels: a
    peak that grows like the accumulator is linear in the voxels (plus a per-window constant).
    """
    first = reports[0]
    lines = []
    for other in reports[1:]:
        voxels = other["job"]["voxels"] / first["job"]["voxels"]
        windows = other["job"]["windows"] / first["job"]["windows"]
        extra_mvox = (other["job"]["voxels"] - first["job"]["voxels"]) / 1e6
        acc_slope = ((other["job"]["accumulator_mb"] - first["job"]["accumulator_mb"]) / extra_mvox
                     if extra_mvox else float("nan"))
        lines.append(f"{first['workload']} -> {other['workload']}: voxels x{voxels:.2f}, windows x{windows:.2f}, "
                     f"accumulator x{other['job']['accumulator_mb'] / first['job']['accumulator_mb']:.2f} "
                     f"({acc_slope:.1f} MB per M voxels)")
        lines.append(f"{'variant':<15} {'time x':>7} {'time x per window':>18} {'peak MB':>16} "
                     f"{'marginal MB per M voxels':>25}")
        before = {r["name"]: r for r in first["results"]}
        for row in other["results"]:
            old = before.get(row["name"])
            if not old or "seconds_median" not in row or "seconds_median" not in old:
                continue
            t = row["seconds_median"] / old["seconds_median"]
            peaks = (old.get("peak_rss_mb"), row.get("peak_rss_mb"))
            if all(isinstance(p, (int, float)) for p in peaks):
                peak_text = f"{peaks[0]:.0f} -> {peaks[1]:.0f}"
                slope = f"{(peaks[1] - peaks[0]) / extra_mvox:.1f}" if extra_mvox else "-"
            else:
                peak_text, slope = "-", "-"
            lines.append(f"{row['name']:<15} {t:>7.2f} {t / windows:>18.2f} {peak_text:>16} {slope:>25}")
    return "\n".join(lines)
