"""The runner of each variant name."""
from __future__ import annotations

from .peers import MonaiRunner, TorchRunner
from .plan import FLOORS, VARIANTS, Job, ServerInfo
from .runners import FloorRunner, LocalRunner, Runner
from .triton import JsonRunner, TritonRunner


def make_runner(name: str, job: Job, server: ServerInfo | None) -> Runner:
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
    from ..core.errors import ConfigError

    raise ConfigError(f"bench: unknown variant {name!r} (known: {', '.join(VARIANTS)}).")
