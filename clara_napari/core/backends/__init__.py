"""Backends run a model: in process (``local``), on a Triton server, or on an embedded one.

``open_backend(server)`` picks one from what the user named:
``"local"`` → a runtime in this process (OpenVINO, onnxruntime or torch; ``runtime=`` picks);
``"host:port"`` or a URL → that Triton server; a list of addresses → a fleet of Triton servers
(``fleet.py``);
``None`` → ``NVIDIA_CLARA_TRTISURI`` if set, else the app's inferer args, else a Triton server
this package starts itself.
"""
from __future__ import annotations

from .base import ModelHandle
from .local import LocalBackend

__all__ = ["ModelHandle", "LocalBackend", "open_backend"]


def open_backend(server=None, *, threads: int | None = None, runtime: str | None = None, **options):
    """``runtime`` (``openvino``, ``onnxruntime``, ``torch``; default: the fastest installed) runs the
    model locally or in the embedded server; an external Triton serves with whatever it has."""
    if isinstance(server, (list, tuple)):   # several endpoints: windows spread over a fleet
        if len(server) != 1:
            from .fleet import FleetBackend

            return FleetBackend(server, threads=threads, **options)
        server = server[0]
    if server is not None and server.strip().lower() == "local":
        return LocalBackend(threads=threads, runtime=runtime)
    from .triton import TritonBackend

    if runtime:
        options["runtime"] = runtime
    return TritonBackend(server, threads=threads, **options)
