"""Triton Inference Server backend: resolves the server and opens models on it.

The transport (addresses, clients, typed errors, shared memory, the model handle, the embedded
server) is the :mod:`clara_napari.core.triton` package; this module only decides which server a
run uses and opens its models there.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any

from ..model_repository import read_model_config
from ..triton.address import Address, TransportOptions, parse_address, request_headers
from ..triton.client import (
    repository_index,
    server_model_spec,
    wait_ready,
    with_client,
    with_server_key,
)
from ..triton.model import TritonModel

log = logging.getLogger(__name__)


class TritonBackend:
    """Resolves the server (named, from the environment, from the app, or embedded) and opens models."""

    def __init__(self, server: str | None = None, *, app=None, threads: int | None = None, runtime: str | None = None,
                 **options: Any) -> None:
        self.server = server if server is not None else os.environ.get("NVIDIA_CLARA_TRTISURI") or None
        self.app = app
        self.threads = threads
        self.runtime = runtime  # the embedded server's runtime (an external server serves with its own)
        self.options = TransportOptions(**options)
        self.embedded = None
        self.address: Address | None = None
        #: the in-process backend, when no server was named and the embedded one is not installed
        self.fallback = None

    @property
    def description(self) -> str:
        if self.fallback is not None:
            return self.fallback.description
        where = "embedded Triton" if self.embedded is not None else "Triton"
        return f"{where} at {self.address}" if self.address else where

    def target(self, inferer=None) -> str | None:
        """The server to use: the one named (else ``$NVIDIA_CLARA_TRTISURI``), else the app's inferer
        ``ip``/``port``; None means an embedded server."""
        return self.server or (inferer.address if inferer is not None else None)

    def resolve(self, inferer=None, repository: Path | None = None, model_name: str | None = None) -> Address | None:
        """The server's address; ``None`` when the run falls back to the in-process backend."""
        if self.address is not None or self.fallback is not None:
            return self.address
        protocol = self.options.protocol or (inferer.protocol.lower() if inferer is not None else None)
        target = self.target(inferer)
        if target:
            self.address = parse_address(target, protocol)
        else:
            from ..apps import bundled_model_repository, refuse_python_models
            from ..triton.embedded import EmbeddedServer
            from ..triton.locations import embedded_server_missing

            refuse_python_models(repository or (self.app.model_repository if self.app is not None else None))
            repo = repository or (self.app.model_repository if self.app is not None else bundled_model_repository())
            missing = embedded_server_missing()
            if missing:
                from .local import LocalBackend

                log.warning("%s: running the model in this process instead; name a Triton server with "
                            "--server host:port (HTTP/gRPC, any platform) to use one.", missing)
                self.fallback = LocalBackend(threads=self.threads, runtime=self.runtime)
                return None
            wanted = [model_name] if model_name else None   # a run's server loads only its model
            self.embedded = EmbeddedServer(repo, threads=self.threads, models=wanted, runtime=self.runtime).start()
            port = self.embedded.ports["grpc" if protocol == "grpc" else "http"]
            self.address = Address("127.0.0.1", port, protocol or "http")
        return self.address

    def open(self, repository: Path, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", inferer=None, model_loader=None) -> TritonModel:
        address = self.resolve(inferer, repository, model_name)
        if address is None:
            return self.fallback.open(repository, model_name, input_name=input_name, output_name=output_name,
                                      version=version)
        expected = read_model_config(model_loader.model_spec_file_name) if model_loader is not None else None
        in_flight = inferer.requests_in_flight if inferer is not None else 2
        timeout = self.options.timeout_s or (inferer.timeout_s if inferer is not None else 120.0)
        model = TritonModel(address, model_name, version=version, input_name=input_name, output_name=output_name,
                            in_flight=in_flight, timeout_s=timeout, options=self.options, expected=expected)
        model.description = f"{self.description} ({model.transport})"
        return model

    def list_models(self, repository: Path | None = None) -> list[str]:
        address = self.resolve(None, repository)
        if address is None:
            return self.fallback.list_models(repository)
        return with_client(address, self.options, 30.0, functools.partial(self._list_models, address))

    def _list_models(self, address: Address, client) -> list[str]:
        headers = with_server_key(address, request_headers(self.options, address))
        wait_ready(client, address, self.options.ready_timeout_s, headers)
        rows = [f"server {address}"]
        for entry in repository_index(client, address, headers):
            line = f"{entry['name']:<28} version {entry['version'] or '-':<4} {entry['state']}"
            if entry.get("state") == "READY":
                with contextlib.suppress(Exception):
                    spec = server_model_spec(client, address, entry["name"], headers=headers)
                    line += ("  in " + ", ".join(t.describe() for t in spec.inputs) +
                             "  out " + ", ".join(t.describe() for t in spec.outputs) +
                             f"  max_batch {spec.max_batch_size}")
            rows.append(line)
        return rows

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        self.address = None
