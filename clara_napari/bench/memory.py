"""Peak memory of one variant, measured in a fresh process (and the embedded server's processes)."""
from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from .plan import TRITON_VARIANTS, Job, ServerInfo, Skip
from .triton import embedded_server
from .variants import make_runner


def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_peak(pid: int | str) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class ServerMemory(threading.Thread):
    """Samples the server's memory every 10 ms: the private anonymous memory of its processes
    (``RssAnon``: ``tritonserver`` and the python-backend stubs) plus the pages of the python
    backend's shared-memory pool (``/dev/shm``, mapped by both, counted once). The client's own
    shared-memory regions, also mapped by the server, are counted in the client only.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="clara-bench-memory")
        from ..core.triton.processes import group_members, stub_regions

        self.pids, regions = group_members(pid), stub_regions(pid)
        self.regions = [Path("/dev/shm") / name for name in regions]
        self.base = self.peak = self.sample()
        self._stop_event = threading.Event()

    def sample(self) -> int:
        kb = sum(_status_kb(pid, "RssAnon") for pid in self.pids)
        for region in self.regions:
            with contextlib.suppress(OSError):
                kb += region.stat().st_blocks // 2   # pages actually allocated in tmpfs (512-byte blocks)
        return kb

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> float:
        """Peak MB above the baseline."""
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.sample())
        return max(0, self.peak - self.base) / 1024


def probe_memory(variant: str, job: Job, server: ServerInfo | None) -> dict:
    """In this (fresh) process: baseline after set-up and one warm-up window, then one run's peak.

    The client's peak is exact (the kernel's ``VmHWM`` after a reset); the server's is sampled
    (:class:`ServerMemory`).
    """
    runner = make_runner(variant, job, server)
    runner.setup()
    gc.collect()
    sampler = ServerMemory(server.pid) if server is not None and variant in TRITON_VARIANTS else None
    base = _status_kb("self", "VmRSS")
    exact = _reset_peak("self")
    if sampler is not None:
        sampler.start()
    seconds, out = runner.run()
    client = max(0, _status_kb("self", "VmHWM") - base) / 1024
    server_mb = sampler.stop() if sampler is not None else 0.0
    del out
    runner.close()
    return {"name": variant, "peak_rss_client_mb": round(client, 1), "peak_rss_server_mb": round(server_mb, 1),
            "peak_rss_mb": round(client + server_mb, 1), "baseline_rss_mb": round(base / 1024, 1),
            "exact": exact, "seconds": round(seconds, 3)}


def memory_in_subprocess(variant: str, job: Job, image_file: Path, timeout: float) -> dict:
    """:func:`probe_memory` in a fresh interpreter (with a fresh embedded server for the Triton variants)."""
    spec = {"variant": variant, "job": job.params, "image": str(image_file)}
    command = [sys.executable, "-m", "clara_napari.bench", "--probe", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"the memory probe for {variant} failed (exit {done.returncode}): {tail[:400]}")


def probe_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    image = np.load(spec["image"])
    job = Job.from_params(spec["job"], image)
    try:
        with embedded_server(job, spec["variant"] in TRITON_VARIANTS) as server:
            result = probe_memory(spec["variant"], job, server)
    except Skip as exc:
        result = {"name": spec["variant"], "skipped": str(exc)}
    print(json.dumps(result), flush=True)
    return 0
