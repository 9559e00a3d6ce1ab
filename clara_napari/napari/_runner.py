"""What the widget runs in its worker thread: resolve the server, open the model, segment (no Qt here)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.apps import App
from ..core.config import InferenceConfig
from ..core.errors import Cancelled
from ..core.masking import parse_header_items
from ..core.pipeline import Segmentation
from ..core.progress import CancelToken
from ..core.session import EMBEDDED, FLEET, LOCAL, ServerChoice, Session, choose_server, open_backend
from ..core.triton.address import parse_address
from ..core.volume import Volume
from ._panel import check_reachable
from ._servers import SERVERS, ServerPool


@dataclass
class ServerInfo:
    """Where a run goes: the address, what it is, and the models it serves (name → state)."""

    address: str
    description: str
    models: dict[str, str] = field(default_factory=dict)
    version: str = ""
    kind: str = ""

    @property
    def where(self) -> str:
        if self.kind == LOCAL or self.address == LOCAL:
            return "this machine (in process)"
        if self.kind == FLEET:
            return f"{len(self.address.split(','))} servers"
        host = parse_address(self.address).host
        return "this machine" if host in ("127.0.0.1", "localhost", "::1") else host


def reach(choice: ServerChoice) -> None:
    """A named server that nothing listens at is refused at once (every endpoint of a fleet)."""
    for address in choice.addresses:
        check_reachable(address)


def _info(choice: ServerChoice, backend, models: dict[str, str] | None = None) -> ServerInfo:
    if choice.kind == LOCAL:
        return ServerInfo(LOCAL, choice.describe(), dict(models or {}), kind=LOCAL)
    if choice.kind == EMBEDDED:
        version = getattr(backend, "version", "")
        return ServerInfo(str(backend.address), f"embedded Triton {version}".strip(), dict(models or {}), version,
                          kind=EMBEDDED)
    return ServerInfo(", ".join(map(str, choice.addresses)), choice.describe(), dict(models or {}), kind=choice.kind)


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


def connect(server: str, protocol: str, repository: Path, *, ready_timeout_s: float = 15.0,
            pool: ServerPool = SERVERS, transport: dict[str, Any] | None = None, inferer=None) -> ServerInfo:
    """The server the field names (chosen as for every entry point), reached now, with its models
    (of the first endpoint for several: the run checks that all serve the same model)."""
    choice = choose_server(server, inferer=inferer, protocol=protocol)
    reach(choice)
    if choice.kind == LOCAL:
        from ..core.model_repository import list_models

        return _info(choice, None, {spec.name: "local" for spec in list_models(repository)})
    first = choice if choice.kind != FLEET else ServerChoice("remote", choice.addresses[:1], choice.protocol)
    backend = open_backend(first, repository=repository, embedded=pool.embedded,
                           transport={"ready_timeout_s": ready_timeout_s, **(transport or {})})
    try:
        models = backend.model_states()
        return _info(choice, backend, models)
    finally:
        backend.close()


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
        choice = choose_server(job.server, inferer=config.inferer, protocol=job.protocol)
        stage({EMBEDDED: "starting the embedded Triton server", LOCAL: "loading the model in process"}.get(
            choice.kind, f"connecting to {', '.join(map(str, choice.addresses))}"))
        reach(choice)
        if job.cancel.cancelled:
            raise Cancelled("the inference was cancelled.")
        stage("opening the model")
        with Session(job.app, choice=choice, config=config, embedded=job.pool.embedded,
                     transport={"ready_timeout_s": job.ready_timeout_s, **job.transport}) as session:
            info = _info(choice, session.backend, {config.model_name: "READY"})
            segmentation = session.segment(job.volume, progress=job.progress, cancel=job.cancel, stage=stage,
                                           probabilities=job.probabilities)
        prepared = job.prepare(segmentation) if job.prepare is not None else None
        if job.cancel.cancelled:   # finished just as Cancel was pressed: cancel still means "add nothing"
            return Outcome(server=info, cancelled=True)
        return Outcome(segmentation=segmentation, server=info, prepared=prepared)
    except Cancelled:
        return Outcome(server=info, cancelled=True)
    except Exception as exc:  # noqa: BLE001 - handed to the GUI thread, shown there as a notification
        return Outcome(server=info, error=exc)
