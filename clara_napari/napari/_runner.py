"""What the widget runs in its worker thread: resolve the server, open the model, segment (no Qt here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.apps import App
from ..core.backends.triton import TritonBackend
from ..core.triton.address import TransportOptions, parse_address
from ..core.triton.client import repository_index, wait_ready, with_client, with_server_key
from ..core.components import ScanWindowInferer
from ..core.config import InferenceConfig
from ..core.errors import Cancelled
from ..core.masking import parse_header_items
from ..core.pipeline import Segmentation, segment_volume
from ..core.progress import CancelToken
from ..core.volume import Volume
from ._panel import EMBEDDED, LOCAL, check_reachable, choose_server
from ._servers import SERVERS, ServerPool


def is_embedded(server: str) -> bool:
    """The field names the embedded server itself (``auto`` may too: see :func:`choose_server`)."""
    return server.strip().lower() == EMBEDDED


def split_servers(server: str) -> list[str]:
    """The server field: one address, or several separated by commas (a fleet: docs/scale.md)."""
    return [part.strip() for part in server.split(",") if part.strip()]


@dataclass
class ServerInfo:
    """Where a run goes: the address, what it is, and the models it serves (name → state)."""

    address: str
    description: str
    models: dict[str, str] = field(default_factory=dict)
    version: str = ""

    @property
    def where(self) -> str:
        if self.address == LOCAL:
            return "this machine (onnxruntime, in process)"
        if len(split_servers(self.address)) > 1:
            return f"{len(split_servers(self.address))} servers"
        host = parse_address(self.address).host
        return "this machine" if host in ("127.0.0.1", "localhost", "::1") else host


def resolve_server(server: str, protocol: str, repository: Path, *, pool: ServerPool = SERVERS,
                   inferer=None) -> tuple[str, str, str]:
    """(address, description, version): ``local``, the embedded server (started if needed), or a Triton
    address (the one typed, else as the CLI chooses: see :func:`choose_server`), refused at once when
    nothing listens there."""
    protocol = protocol.lower()
    parts = split_servers(server)
    if len(parts) > 1:   # a fleet (docs/scale.md): every endpoint must answer
        addresses = [str(parse_address(part, protocol)) for part in parts]
        for address in addresses:
            check_reachable(address)
        return ", ".join(addresses), f"Triton fleet of {len(addresses)}", ""
    choice = choose_server(server, protocol, inferer)
    if choice.kind == LOCAL:
        return LOCAL, choice.describe(), ""
    if choice.kind == EMBEDDED:
        embedded = pool.embedded(repository)
        address = embedded.grpc_url if protocol == "grpc" else embedded.http_url
        return address, f"embedded Triton {embedded.version}".strip(), embedded.version
    check_reachable(choice.address)
    return choice.address, choice.describe(), ""


def transport_options(headers: str = "", ssl_ca: str = "", ssl_cert: str = "", ssl_key: str = "") -> dict[str, Any]:
    """The widget's transport fields as TransportOptions keywords: ``KEY=VALUE; KEY=VALUE`` headers
    and TLS files (empty fields are left out)."""
    options: dict[str, Any] = {}
    parsed = parse_header_items([part.strip() for part in headers.split(";") if part.strip()])
    if parsed:
        options["headers"] = parsed
    for name, value in (("ssl_ca", ssl_ca), ("ssl_cert", ssl_cert), ("ssl_key", ssl_key)):
        if str(value or "").strip() not in ("", "."):
            options[name] = str(value).strip()
    return options


def read_models(address: str, *, ready_timeout_s: float = 15.0, transport: dict[str, Any] | None = None) -> dict[str, str]:
    """The server's model repository index: model name → state (READY, UNAVAILABLE, ...);
    of the first endpoint for several (the run checks that all serve the same model)."""
    parsed = parse_address(split_servers(address)[0])
    options = TransportOptions(ready_timeout_s=ready_timeout_s, **(transport or {}))

    def read(client) -> dict[str, str]:
        headers = with_server_key(parsed, options.headers)
        wait_ready(client, parsed, ready_timeout_s, headers)
        return {e["name"]: e["state"] for e in repository_index(client, parsed, headers)}
    # on a thread of its own, closed with its gevent hub: the widget asks on every refresh
    return with_client(parsed, options, 30.0, read)


def connect(server: str, protocol: str, repository: Path, *, ready_timeout_s: float = 15.0,
            pool: ServerPool = SERVERS, transport: dict[str, Any] | None = None, inferer=None) -> ServerInfo:
    address, description, version = resolve_server(server, protocol, repository, pool=pool, inferer=inferer)
    if address == LOCAL:
        from ..core.model_repository import list_models

        return ServerInfo(address, description, {spec.name: "local" for spec in list_models(repository)})
    models = read_models(address, ready_timeout_s=ready_timeout_s, transport=transport)
    return ServerInfo(address, description, models, version)


def configured(config: InferenceConfig, *, model: str | None = None, roi_size: list[int] | None = None,
               overlap: float | None = None, blending: str | None = None,
               requests_in_flight: int | None = None) -> InferenceConfig:
    """A copy of ``config`` with the widget's choices (the app's own config is left untouched).

    A model other than the app's drops the app's model loader (its ``config.pbtxt`` describes the
    app's model). ``roi_size`` with a zero means "the model's own window".
    """
    inferer = config.inferer
    updates: dict[str, Any] = {}
    loader = config.model_loader
    if model and model != inferer.model_name:
        updates["model_name"] = model
        loader = None
    if isinstance(inferer, ScanWindowInferer):
        if roi_size is not None:
            updates["roi_size"] = [int(v) for v in roi_size] if all(int(v) > 0 for v in roi_size) else None
        if overlap is not None:
            updates["overlap"] = float(overlap)
        if blending is not None:
            updates["blending"] = blending
    if requests_in_flight is not None:
        updates["requests_in_flight"] = int(requests_in_flight)
    return dataclasses.replace(config, inferer=inferer.model_copy(update=updates), model_loader=loader)


@dataclass
class Job:
    """One run, prepared on the GUI thread and executed by :func:`run_job` in a worker thread."""

    volume: Volume
    app: App
    config: InferenceConfig
    server: str = EMBEDDED
    protocol: str = "HTTP"
    ready_timeout_s: float = 15.0
    #: headers and TLS files for the server (see :func:`transport_options`)
    transport: dict[str, Any] = field(default_factory=dict)
    cancel: CancelToken = field(default_factory=CancelToken)
    progress: Callable[[int, int], None] | None = None
    stage: Callable[[str], None] | None = None
    pool: ServerPool = SERVERS
    #: runs in the worker after the segmentation (e.g. builds the result layer off the GUI thread)
    prepare: Callable[[Segmentation], Any] | None = None
    #: also keep the foreground score (Segmentation.probabilities)
    probabilities: bool = False


@dataclass
class Outcome:
    """What a run ended with: a segmentation, a cancellation, or an error (the worker never raises)."""

    segmentation: Segmentation | None = None
    server: ServerInfo | None = None
    cancelled: bool = False
    error: BaseException | None = None
    prepared: Any = None


def run_job(job: Job) -> Outcome:
    stage = job.stage or (lambda name: None)
    info: ServerInfo | None = None
    try:
        config = job.config
        choice = choose_server(job.server, job.protocol, config.inferer)
        stage({EMBEDDED: "starting the embedded Triton server", LOCAL: "loading the model in process"}.get(
            choice.kind, f"connecting to {choice.address}"))
        address, description, version = resolve_server(job.server, job.protocol, job.app.model_repository, pool=job.pool,
                                                       inferer=config.inferer)
        info = ServerInfo(address, description, version=version)
        if job.cancel.cancelled:
            raise Cancelled("the inference was cancelled.")
        stage("opening the model")
        if address == LOCAL:
            from ..core.backends import open_backend

            backend = open_backend(LOCAL)
        elif len(split_servers(address)) > 1:
            from ..core.backends.fleet import FleetBackend

            backend = FleetBackend(split_servers(address), ready_timeout_s=job.ready_timeout_s, **job.transport)
        else:
            backend = TritonBackend(address, ready_timeout_s=job.ready_timeout_s, **job.transport)
        try:
            model = backend.open(job.app.model_repository, config.model_name, input_name=config.inferer.input_name,
                                 output_name=config.inferer.output_name, version=config.inferer.model_version,
                                 inferer=config.inferer, model_loader=config.model_loader)
            try:
                info.models = {config.model_name: "READY"}
                segmentation = segment_volume(job.volume, config, model, progress=job.progress, cancel=job.cancel,
                                              stage=stage, probabilities=job.probabilities)
            finally:
                model.close()
        finally:
            backend.close()
        prepared = job.prepare(segmentation) if job.prepare is not None else None
        if job.cancel.cancelled:   # finished just as Cancel was pressed: cancel still means "add nothing"
            return Outcome(server=info, cancelled=True)
        return Outcome(segmentation=segmentation, server=info, prepared=prepared)
    except Cancelled:
        return Outcome(server=info, cancelled=True)
    except Exception as exc:  # handed to the GUI thread, shown as a notification
        return Outcome(server=info, error=exc)
