"""The bench's workloads and the prepared job every variant runs (and the names of the variants)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VARIANTS = ("floor-openvino", "floor-onnxruntime", "local", "triton-http", "triton-grpc", "triton-shm", "monai",
            "torch", "json-transport")
FLOORS = ("floor-openvino", "floor-onnxruntime")
#: rows that get an end-to-end run of the whole app
END_TO_END = ("local", "triton-http", "triton-grpc", "triton-shm", "torch")
TORCHSCRIPT = "torchscript"   # sample_data/torchscript/<model>/1/model.pt
TRITON_VARIANTS = ("triton-http", "triton-grpc", "triton-shm", "json-transport")


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
    def from_params(cls, params: dict, image: np.ndarray) -> Job:
        p = dict(params)
        p["roi"] = tuple(p["roi"])
        p["repository"] = Path(p["repository"])
        return cls(image=image, **p)

    @property
    def plan(self):
        from ..core.windows import plan_windows

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
    from ..core.apps import resolve_app, sample_data_dir
    from ..core.backends.base import fixed_window
    from ..core.model_repository import find_model
    from ..core.transforms import Sample
    from ..core.transforms.spatial import (
        LoadNifti,
        ScaleByFactor,
        ScaleByResolution,
        ScaleBySpacing,
        ScaleToShape,
    )
    from ..core.volume import read_volume

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
        from ..core.errors import ConfigError

        raise ConfigError(f"bench: the app {app.name} has no window size.")
    return Job(workload=workload.name, image=image, roi=tuple(int(r) for r in roi), overlap=inferer.overlap,
               blending=inferer.blending, pad_value=inferer.pad_value,
               batch_size=inferer.batch_size or config.batch_size or 1, in_flight=inferer.requests_in_flight,
               model_name=config.model_name, repository=app.model_repository,
               out_channels=int(spec.outputs[0].dims[0]), threads=threads, runtime=runtime or "")


class Skip(Exception):
    """A variant that cannot run here (its note says why)."""


@dataclass
class ServerInfo:
    """The embedded server the Triton rows talk to (its process id for the memory probe)."""

    host: str
    ports: dict
    pid: int
    version: str = ""
