"""Triton Inference Server backends: models opened on a server at an address, or on an embedded
server started here (or borrowed from the napari widget's pool).

Which server a run uses is decided by :func:`clara_napari.core.session.choose_server`; the transport
(addresses, clients, typed errors, shared memory, the model handle, the embedded server) is the
:mod:`clara_napari.core.triton` package.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClaraNapariError, ServerError
from ..model_repository import read_model_config
from ..triton.address import Address, TransportOptions, parse_address, request_headers
from ..triton.client import repository_index, server_model_spec, wait_ready, with_client, with_server_key
from ..triton.model import TritonModel

if TYPE_CHECKING:
    from ..triton.embedded import EmbeddedServer

log = logging.getLogger(__name__)


class TritonBackend:
    """Opens models on one Triton server (the address :func:`~clara_napari.core.session.choose_server`
    decided) and lists what it serves."""

    def __init__(self, address: Address | str | None = None, **options: Any) -> None:
        self.options = TransportOptions(**options)
        self.address: Address | None = (parse_address(address, self.options.protocol) if isinstance(address, str)
                                         else address)

    @property
    def description(self) -> str:
        """``Triton at ADDRESS``, or ``embedded Triton at ADDRESS`` when it is a server this process
        started (or whose key it was handed: a Dask worker on its machine's server)."""
        if self.address is None:
            return "Triton"
        from ..triton.keys import server_headers

        embedded = bool(server_headers(self.address.host, self.address.port))
        return f"{'embedded ' if embedded else ''}Triton at {self.address}"

    def server_address(self, model_name: str | None = None) -> Address:
        """Where requests go (the embedded backend starts its server here, loading ``model_name``)."""
        if self.address is None:
            raise ServerError("no Triton server address was given.")
        return self.address

    def open(self, repository: Path | None, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", inferer=None, model_loader=None) -> TritonModel:
        address = self.server_address(model_name)
        expected = read_model_config(model_loader.model_spec_file_name) if model_loader is not None else None
        in_flight = inferer.requests_in_flight if inferer is not None else 2
        timeout = self.options.timeout_s or (inferer.timeout_s if inferer is not None else 120.0)
        model = TritonModel(address, model_name, version=version, input_name=input_name, output_name=output_name,
                            in_flight=in_flight, timeout_s=timeout, options=self.options, expected=expected)
        model.description = f"{self.description} ({model.transport})"
        return model

    def list_models(self, repository: Path | None = None) -> list[str]:
        address = self.server_address()
        return with_client(address, self.options, 30.0, functools.partial(self._list_models, address))

    def model_states(self) -> dict[str, str]:
        """The server's models: name → state (READY, UNAVAILABLE, ...)."""
        address = self.server_address()

        def read(client) -> dict[str, str]:
            headers = with_server_key(address, request_headers(self.options, address))
            wait_ready(client, address, self.options.ready_timeout_s, headers)
            return {e["name"]: e["state"] for e in repository_index(client, address, headers)}
        # on a thread of its own, closed with its gevent hub: the widget asks on every refresh
        return with_client(address, self.options, 30.0, read)

    def _list_models(self, address: Address, client) -> list[str]:
        headers = with_server_key(address, request_headers(self.options, address))
        wait_ready(client, address, self.options.ready_timeout_s, headers)
        rows = [self.description]
        for entry in repository_index(client, address, headers):
            line = f"{entry['name']:<28} version {entry['version'] or '-':<4} {entry['state']}"
            if entry.get("state") == "READY":
                try:
                    spec = server_model_spec(client, address, entry["name"], headers=headers)
                except ClaraNapariError as exc:   # listed anyway, with why its config is not shown
                    line += f"  (config not readable: {exc})"
                else:
                    line += ("  in " + ", ".join(t.describe() for t in spec.inputs) +
                             "  out " + ", ".join(t.describe() for t in spec.outputs) +
                             f"  max_batch {spec.max_batch_size}")
            rows.append(line)
        return rows

    def close(self) -> None:
        pass


class EmbeddedBackend(TritonBackend):
    """A Triton server this package starts (on first use; a run's server loads only the run's model)
    and stops when the backend closes — or one a ``provider`` keeps running (the napari widget's)."""

    def __init__(self, repository: Path, *, protocol: str = "http", threads: int | None = None,
                 runtime: str | None = None, provider=None, **options: Any) -> None:
        super().__init__(None, protocol=protocol, **options)
        self.repository = repository
        self.threads = threads
        self.runtime = runtime
        self.provider = provider
        self.server: EmbeddedServer | None = None
        self.version = ""

    def server_address(self, model_name: str | None = None) -> Address:
        if self.address is None:
            from ..triton.embedded import EmbeddedServer

            if self.provider is not None:
                server = self.provider(self.repository)
            else:
                wanted = [model_name] if model_name else None   # a run's server loads only its model
                server = self.server = EmbeddedServer(self.repository, threads=self.threads, models=wanted,
                                                      runtime=self.runtime).start()
            self.version = str(getattr(server, "version", "") or "")
            protocol = self.options.protocol or "http"
            self.address = Address("127.0.0.1", server.ports["grpc" if protocol == "grpc" else "http"], protocol)
        return self.address

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        self.address = None
