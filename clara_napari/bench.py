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
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

VARIANTS = ("floor-openvino", "floor-onnxruntime", "local", "triton-http", "triton-grpc", "triton-shm", "monai",
            "torch", "json-transport")
FLOORS = ("floor-openvino", "floor-onnxruntime")
#: rows that get an end-to-end run of the whole app
END_TO_END = ("local", "triton-http", "triton-grpc", "triton-shm", "torch")
TORCHSCRIPT = "torchscript"   # sample_data/torchscript/<model>/1/model.pt
TRITON_VARIANTS = ("triton-http", "triton-grpc", "triton-shm", "json-transport")


# -- workloads -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    name: str
    app: str
    input: str                        # relative to sample_data/
    description: str
    resample_mm: float | None = None  # an extra ScaleByResolution after ConvertToChannelsFirst
    roi: tuple[int, int, int] | None = None  # instead of the app's window
    skip: tuple[str, ...] = ()        # variants left out unless named with --variants


WORKLOADS = {
    "brain": Workload("brain", "brain_extraction_t1", "mr_t1/mr_t1_colin27.nii.gz",
                      "T1 MRI 181x217x181 at 1 mm, deepbet, windows 160^3, overlap 0.5, gaussian"),
    "lung": Workload("lung", "lung_ct", "chest_ct/chest_ct_lung2.nii.gz",
                     "chest CT 512x512x61 -> 0.8x0.8x5 mm, lung_air_density, windows 320x320x64, overlap 0.25"),
    "brain-0.5mm": Workload("brain-0.5mm", "brain_extraction_t1", "mr_t1/mr_t1_colin27.nii.gz",
                            "the T1 MRI resampled to 0.5 mm (8x the voxels), windows 160^3, overlap 0.5, gaussian",
                            resample_mm=0.5, skip=("json-transport",)),
    "tiny": Workload("tiny", "brain_extraction_t1", "mr_t1/mr_t1_colin27.nii.gz",
                     "the T1 MRI at 4 mm (46x54x46), windows 32^3 (smoke test; no meaningful timing)",
                     resample_mm=4.0, roi=(32, 32, 32)),
}


@dataclass
class Job:
    """The prepared job every variant runs: the image after the pre-transforms and the window settings."""

    workload: str
    image: np.ndarray                 # [C, x, y, z] float32, C-contiguous
    roi: tuple[int, ...]
    overlap: float
    blending: str
    pad_value: float
    batch_size: int
    in_flight: int
    model_name: str
    repository: Path
    out_channels: int
    threads: int
    runtime: str = ""                 # the local and Triton rows' runtime ("" = the default)

    @property
    def params(self) -> dict:
        return {"workload": self.workload, "roi": list(self.roi), "overlap": self.overlap, "blending": self.blending,
                "pad_value": self.pad_value, "batch_size": self.batch_size, "in_flight": self.in_flight,
                "model_name": self.model_name, "repository": str(self.repository),
                "out_channels": self.out_channels, "threads": self.threads, "runtime": self.runtime}

    @classmethod
    def from_params(cls, params: dict, image: np.ndarray) -> "Job":
        p = dict(params)
        p["roi"] = tuple(p["roi"])
        p["repository"] = Path(p["repository"])
        return cls(image=image, **p)

    @property
    def plan(self):
        from .core.windows import plan_windows

        return plan_windows(self.image.shape[1:], self.roi, self.overlap)

    @property
    def voxels(self) -> int:
        return math.prod(self.image.shape[1:])

    @property
    def input_mb(self) -> float:
        return self.voxels * self.image.shape[0] * 4 / 2**20

    @property
    def accumulator_mb(self) -> float:
        return math.prod(self.plan.padded_shape) * self.out_channels * 4 / 2**20


def prepare_job(workload: Workload, threads: int, runtime: str = "") -> Job:
    """Read the volume and run the app's pre-transforms once (Clara's (x, y, z) channels-first array)."""
    from .core.apps import resolve_app, sample_data_dir
    from .core.backends.base import fixed_window
    from .core.model_repository import find_model
    from .core.transforms import Sample
    from .core.transforms.spatial import LoadNifti, ScaleByFactor, ScaleByResolution, ScaleBySpacing, ScaleToShape
    from .core.volume import read_volume

    app = resolve_app(workload.app)
    config = app.config
    inferer = config.inferer
    volume = read_volume(sample_data_dir() / workload.input)
    transforms = list(config.pre_transforms)
    if workload.resample_mm:
        # the workload's grid replaces the app's own resampling (the brain app brings every input to 1 mm)
        transforms = [t for t in transforms if not isinstance(t, (ScaleByResolution, ScaleBySpacing, ScaleByFactor,
                                                                  ScaleToShape))]
        at = next((i + 1 for i, t in enumerate(transforms) if type(t).__name__ == "ConvertToChannelsFirst"), 0)
        transforms.insert(at, ScaleByResolution(fields=["image"], target_resolution=[workload.resample_mm] * 3))
    sample = Sample(image=volume)
    for transform in transforms:
        transform(sample)
    if not isinstance(sample["image"], np.ndarray):
        LoadNifti(fields=["image"])(sample)
    image = sample.array("image", "bench")
    if image.ndim == 3:
        image = image[None]
    image = np.ascontiguousarray(image, dtype=np.float32)
    spec = find_model(app.model_repository, config.model_name)
    roi = workload.roi or tuple(inferer.roi_size or fixed_window(spec, spec.inputs[0]) or ())
    if not roi:
        from .core.errors import ConfigError

        raise ConfigError(f"bench: the app {app.name} has no window size.")
    return Job(workload=workload.name, image=image, roi=tuple(int(r) for r in roi), overlap=inferer.overlap,
               blending=inferer.blending, pad_value=inferer.pad_value,
               batch_size=inferer.batch_size or config.batch_size or 1, in_flight=inferer.requests_in_flight,
               model_name=config.model_name, repository=app.model_repository,
               out_channels=int(spec.outputs[0].dims[0]), threads=threads, runtime=runtime or "")


# -- variants --------------------------------------------------------------------------------
class Skip(Exception):
    """A variant that cannot run here (its note says why)."""


class Runner:
    """One variant: ``setup`` (open, one warm-up window), ``run`` (the whole job, timed), ``close``."""

    name = ""

    def __init__(self, job: Job, server: "ServerInfo | None" = None) -> None:
        self.job = job
        self.server = server
        self.note = ""

    def setup(self) -> None: ...

    def run(self) -> tuple[float, np.ndarray | None]:
        """Seconds for the job, and the output (None where the variant stitches nothing)."""
        raise NotImplementedError

    def close(self) -> None: ...

    def window(self) -> np.ndarray:
        """The first window as a batch of one (for the warm-up)."""
        plan = self.job.plan
        image = self._padded()
        first = next(plan.windows())
        return np.ascontiguousarray(image[(slice(None),) + first][None])

    def first_batch(self) -> np.ndarray:
        """The first ``batch_size`` windows (a warm-up at the shape the run uses: OpenVINO and
        TorchScript prepare each new input shape on its first call)."""
        image = self._padded()
        windows = list(self.job.plan.windows())[: self.job.batch_size]
        return np.ascontiguousarray(np.stack([image[(slice(None),) + w] for w in windows]))

    def _padded(self) -> np.ndarray:
        plan = self.job.plan
        if any(a or b for a, b in plan.pad):
            return np.pad(self.job.image, ((0, 0),) + plan.pad, constant_values=self.job.pad_value)
        return self.job.image


class FloorRunner(Runner):
    """One runtime alone: every window's forward call, timed one by one and summed."""

    def __init__(self, job: Job, server: "ServerInfo | None", runtime: str) -> None:
        super().__init__(job, server)
        self.runtime, self.name = runtime, f"floor-{runtime}"

    def setup(self) -> None:
        from .core.errors import ConfigError
        from .core.model_repository import find_model
        from .core.runtimes import open_engine

        spec = find_model(self.job.repository, self.job.model_name)
        try:
            engine = open_engine(spec.model_file(), spec.runtime, runtime=self.runtime, threads=self.job.threads)
        except ConfigError as exc:
            raise Skip(str(exc)) from None
        self.input_name, self.output_name = spec.inputs[0].name, spec.outputs[0].name
        self.session = _EngineSession(engine)
        self.session.run([self.output_name], {self.input_name: self.window()})
        self.session.run([self.output_name], {self.input_name: self.first_batch()})
        self.note = f"{engine.description}, forward calls only"

    def run(self) -> tuple[float, None]:
        image = self._padded()
        windows = list(self.job.plan.windows())
        total = 0.0
        for i in range(0, len(windows), self.job.batch_size):
            batch = np.stack([image[(slice(None),) + w] for w in windows[i:i + self.job.batch_size]])
            start = time.perf_counter()
            self.session.run([self.output_name], {self.input_name: batch})
            total += time.perf_counter() - start
            del batch
        return total, None


class _EngineSession:
    """A runtime engine with onnxruntime's ``run(outputs, feed)`` call."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def run(self, outputs, feed):
        return self.engine.run(feed, outputs)


class EngineRunner(Runner):
    """Our engine (``sliding_window``) with a predictor, the app's settings."""

    def predictor(self):
        raise NotImplementedError

    def setup(self) -> None:
        self.model = self.predictor()
        self.model.predict(self.window())

    def run(self) -> tuple[float, np.ndarray]:
        from .core.windows import sliding_window

        job = self.job
        start = time.perf_counter()
        out = sliding_window(job.image, self.model, job.roi, overlap=job.overlap, blending=job.blending,
                             batch_size=job.batch_size, in_flight=job.in_flight, pad_value=job.pad_value)
        return time.perf_counter() - start, out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.model.close()


class LocalRunner(EngineRunner):
    name = "local"

    def predictor(self):
        from .core.backends.local import LocalBackend

        model = LocalBackend(threads=self.job.threads, runtime=self.job.runtime or None).open(
            self.job.repository, self.job.model_name)
        self.note = f"{model.description}, {self.job.in_flight} in flight"
        return model


class TritonRunner(EngineRunner):
    def __init__(self, job: Job, server: "ServerInfo | None", protocol: str, shm: bool, name: str) -> None:
        super().__init__(job, server)
        self.protocol, self.shm, self.name = protocol, shm, name

    def predictor(self):
        from .core.triton.address import Address, TransportOptions
        from .core.triton.model import TritonModel

        if self.server is None:
            raise Skip("no server")
        address = Address(self.server.host, self.server.ports[self.protocol], self.protocol)
        model = TritonModel(address, self.job.model_name, in_flight=self.job.in_flight, timeout_s=600.0,
                            options=TransportOptions(shared_memory=self.shm))
        self.note = f"{model.transport}, {self.job.in_flight} in flight"
        if model.use_shm != self.shm:
            self.note += " (shared memory refused by the server!)"
        return model


class JsonPredictor:
    """Windows sent as JSON numbers (``binary_data=False``), the output back as binary."""

    def __init__(self, host: str, port: int, model_name: str, in_flight: int = 2) -> None:
        from .core.triton.address import Address, TransportOptions
        from .core.triton.client import close_thread_client
        from .core.triton.model import TritonModel
        from .core.triton.threads import ClientThreads

        probe = TritonModel(Address(host, port, "http"), model_name, options=TransportOptions(shared_memory=False))
        self.spec, self.input, self.output = probe.spec, probe.input, probe.output
        self.max_batch_size = probe.max_batch_size
        probe.close()
        self.url, self.model_name = f"{host}:{port}", model_name
        self.host, self.port = host, port
        self._local = threading.local()
        # clients on long-lived threads, closed with their gevent hubs (as TritonModel does)
        self._workers = ClientThreads(in_flight, name="clara-bench-json",
                                      on_exit=functools.partial(close_thread_client, self._local))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._workers.call(self._predict, batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        import tritonclient.http as thttp

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = thttp.InferenceServerClient(self.url, network_timeout=600.0,
                                                                      connection_timeout=60.0)
        batch = np.ascontiguousarray(batch, dtype=self.input.dtype)
        infer_input = thttp.InferInput(self.input.name, list(batch.shape), self.input.datatype)
        infer_input.set_data_from_numpy(batch, binary_data=False)
        requested = thttp.InferRequestedOutput(self.output.name, binary_data=True)
        from .core.triton.keys import server_headers   # the embedded server's key (its APIs are restricted)

        headers = server_headers(self.host, self.port) or None
        return client.infer(self.model_name, [infer_input], outputs=[requested],
                            headers=headers).as_numpy(self.output.name)

    def close(self) -> None:
        self._workers.close()


class JsonRunner(EngineRunner):
    name = "json-transport"

    def predictor(self):
        if self.server is None:
            raise Skip("no server")
        self.note = f"HTTP, JSON inputs, binary outputs, {self.job.in_flight} in flight"
        return JsonPredictor(self.server.host, self.server.ports["http"], self.job.model_name, self.job.in_flight)


class MonaiRunner(Runner):
    """MONAI's ``sliding_window_inference`` around the same onnxruntime session options."""

    name = "monai"

    def setup(self) -> None:
        try:
            import monai
            import torch
            from monai.inferers import sliding_window_inference
        except ImportError as exc:
            raise Skip(f"not installed ({exc.name}); pip install -e '.[bench]'") from None
        from .core.backends.local import LocalBackend

        torch.set_num_threads(self.job.threads)
        self.torch, self.swi = torch, sliding_window_inference
        self.model = LocalBackend(threads=self.job.threads, runtime=self.job.runtime or None).open(
            self.job.repository, self.job.model_name)
        self.model.predict(self.window())
        self.note = (f"MONAI {monai.__version__}, torch {torch.__version__.split('+')[0]} "
                     f"({torch.get_num_threads()} threads), {self.model.description}, {self._same_windows()}")

    def _same_windows(self) -> str:
        """Whether MONAI places its windows where our engine does (the same count, at least, always)."""
        try:
            from monai.data.utils import dense_patch_slices
            from monai.inferers.utils import _get_scan_interval
        except ImportError:
            return "windows not compared"
        job = self.job
        shape = tuple(max(s, r) for s, r in zip(job.image.shape[1:], job.roi))
        interval = _get_scan_interval(shape, job.roi, len(shape), [job.overlap] * len(shape))
        theirs = sorted(tuple(s.start for s in w) for w in dense_patch_slices(shape, job.roi, interval))
        ours = sorted(tuple(s.start for s in w) for w in job.plan.windows())
        if theirs == ours:
            return f"identical windows ({len(ours)})"
        return f"{len(theirs)} windows (ours {len(ours)}), placed differently"

    def _predict(self, batch):
        return self.torch.from_numpy(self.model.predict(batch.numpy()))

    def run(self) -> tuple[float, np.ndarray]:
        job = self.job
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.swi(self.torch.from_numpy(job.image[None]), list(job.roi), job.batch_size, self._predict,
                           overlap=job.overlap, mode=job.blending, sigma_scale=0.125, padding_mode="constant",
                           cval=job.pad_value)
        result = out[0].numpy()
        return time.perf_counter() - start, result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.model.close()


class TorchRunner(Runner):
    """MONAI's ``sliding_window_inference`` calling deepbet's TorchScript network in torch (no NumPy)."""

    name = "torch"

    def setup(self) -> None:
        from .core.apps import sample_data_dir

        try:
            import torch
            from monai.inferers import sliding_window_inference
        except ImportError as exc:
            raise Skip(f"not installed ({exc.name}); pip install -e '.[bench]'") from None
        folder = sample_data_dir() / TORCHSCRIPT / self.job.model_name
        if not (folder / "1" / "model.pt").is_file():
            raise Skip(f"no TorchScript file of {self.job.model_name} ({folder / '1' / 'model.pt'})")
        torch.set_num_threads(self.job.threads)
        self.torch, self.swi = torch, sliding_window_inference
        self.network = torch.jit.load(str(folder / "1" / "model.pt"), map_location="cpu").eval()
        with torch.inference_mode():
            for _ in range(2):   # TorchScript's profiling executor optimises on the first calls
                self.network(torch.from_numpy(self.first_batch()))
        self.note = (f"TorchScript on torch {torch.__version__.split('+')[0]} ({torch.get_num_threads()} threads), "
                     f"MONAI's sliding window")

    def predict_volume(self, image: np.ndarray) -> np.ndarray:
        job = self.job
        with self.torch.inference_mode():
            out = self.swi(self.torch.from_numpy(image[None]), list(job.roi), job.batch_size, self.network,
                           overlap=job.overlap, mode=job.blending, sigma_scale=0.125, padding_mode="constant",
                           cval=job.pad_value)
        return out[0].numpy()

    def run(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        result = self.predict_volume(self.job.image)
        return time.perf_counter() - start, result


def end_to_end(workload: Workload, runner: Runner, job: Job) -> dict | None:
    """One run of the whole app with ``runner``'s model: read → pre → windows → post → write, seconds each.

    Through the project's pipeline (``segment_volume``) and the app's writers, as ``clara-napari run``
    does; the torch row uses the local backend's TorchScript runtime on deepbet's ``model.pt``.
    """
    from .core.apps import resolve_app, sample_data_dir
    from .core.pipeline import segment_volume
    from .core.volume import read_volume

    if workload.resample_mm or workload.roi:
        return None
    model = getattr(runner, "model", None)
    if isinstance(runner, TorchRunner):
        from .core.backends.local import LocalBackend

        model = LocalBackend(threads=job.threads, runtime="torch").open(sample_data_dir() / TORCHSCRIPT,
                                                                           job.model_name)
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


def make_runner(name: str, job: Job, server: "ServerInfo | None") -> Runner:
    if name in FLOORS:
        return FloorRunner(job, server, name[len("floor-"):])
    if name == "torch":
        return TorchRunner(job, server)
    if name == "local":
        return LocalRunner(job, server)
    if name == "triton-http":
        return TritonRunner(job, server, "http", False, name)
    if name == "triton-grpc":
        return TritonRunner(job, server, "grpc", False, name)
    if name == "triton-shm":
        return TritonRunner(job, server, "http", True, name)
    if name == "monai":
        return MonaiRunner(job, server)
    if name == "json-transport":
        return JsonRunner(job, server)
    from .core.errors import ConfigError

    raise ConfigError(f"bench: unknown variant {name!r} (known: {', '.join(VARIANTS)}).")


# -- the server ------------------------------------------------------------------------------
@dataclass
class ServerInfo:
    host: str
    ports: dict
    pid: int
    version: str = ""


def server_pids(pid: int) -> list[int]:
    from .core.triton.processes import group_members

    return group_members(pid)


# -- memory ----------------------------------------------------------------------------------
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
        from .core.triton.processes import stub_regions

        self.pids = server_pids(pid)
        self.regions = [Path("/dev/shm") / name for name in stub_regions(pid)]
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


def _probe_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    image = np.load(spec["image"])
    job = Job.from_params(spec["job"], image)
    embedded = server = None
    try:
        if spec["variant"] in TRITON_VARIANTS:
            from .core.triton.embedded import EmbeddedServer

            embedded = EmbeddedServer(job.repository, threads=job.threads, runtime=job.runtime or None).start()
            server = ServerInfo(embedded.host, dict(embedded.ports), embedded.process.pid, embedded.version)
        result = probe_memory(spec["variant"], job, server)
    except Skip as exc:
        result = {"name": spec["variant"], "skipped": str(exc)}
    finally:
        if embedded is not None:
            embedded.stop()
    print(json.dumps(result), flush=True)
    return 0


# -- the benchmark ---------------------------------------------------------------------------
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
    versions = {}
    for module in ("numpy", "openvino", "onnxruntime", "tritonclient", "torch", "monai"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module)
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": None,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}
    if server is not None:
        info["triton"] = server.version
    return info


def run_benchmark(workload: Workload, *, variants: list[str], repeat: int, threads: int, memory: bool = True,
                  log: Callable[[str], None] = print, runtime: str = "") -> dict:
    from .core.triton.embedded import EmbeddedServer

    started = time.perf_counter()
    load_before = os.getloadavg()
    job = prepare_job(workload, threads, runtime)
    plan = job.plan
    log(f"workload {workload.name}: {workload.description}")
    log(f"  image {list(job.image.shape)} float32 ({job.input_mb:.1f} MB), {len(plan)} windows of {list(job.roi)}, "
        f"overlap {job.overlap}, {job.blending}, batch {job.batch_size}, {job.in_flight} in flight, "
        f"{threads} threads")
    server = None
    embedded = None
    try:
        if any(v in TRITON_VARIANTS for v in variants):
            embedded = EmbeddedServer(job.repository, threads=threads, runtime=job.runtime or None).start()
            server = ServerInfo(embedded.host, dict(embedded.ports), embedded.process.pid, embedded.version)
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
    finally:
        if embedded is not None:
            embedded.stop()
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


# -- reporting -------------------------------------------------------------------------------
def format_table(report: dict) -> str:
    job = report["job"]
    lines = [f"{report['workload']}: {job['windows']} windows of {job['roi']} on {job['image_shape']} "
             f"({job['voxels'] / 1e6:.1f} M voxels); memory budget {job['memory_budget_mb']} MB = 1.5 x "
             f"(input {job['input_mb']} MB + accumulator {job['accumulator_mb']} MB)",
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


# -- command line (the arguments are defined in cli.py: ``clara-napari bench``) --------------
def main_args(args: argparse.Namespace) -> int:
    """Run ``clara-napari bench`` with its parsed arguments (see :func:`clara_napari.cli.build_parser`)."""
    from .core.errors import ConfigError

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


def main(argv: list[str] | None = None) -> int:
    """``python -m clara_napari.bench ARGS`` is ``clara-napari bench ARGS``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--probe"]:
        return _probe_main(argv[1])
    from .cli import main as cli_main

    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
