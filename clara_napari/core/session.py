"""Which server or runtime a run uses — decided here, once, for every entry point — and the session
that opens a model once and segments many volumes.

Every entry point (``clara-napari run`` and ``models``, the notebook API, the operator, Dask
workers, the napari widget, the bench) calls :func:`choose_server` with what the user named and the
app's inferer, then :func:`open_backend` (or :class:`Session`, which does both). The policy:

``"local"``
    the model runs in this process (OpenVINO, onnxruntime or torch: ``runtime=``).
``"embedded"``
    a Triton server this package starts itself (``nvidia-pytriton``).
an address (``host:port``, ``http[s]://``, ``grpc[s]://``)
    that Triton server; several (a list, or commas) → a fleet the windows are spread over.
``None``, ``""`` or ``"auto"``
    ``$NVIDIA_CLARA_TRTISURI`` if set, else the app's inferer ``ip``/``port``, else the embedded
    server — or, when that is not installed, the local runtime (said in the choice's ``reason``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ServerError, UsageError

if TYPE_CHECKING:
    from .apps import App
    from .backends.base import ModelHandle
    from .config import InferenceConfig
    from .pipeline import Segmentation
    from .triton.address import Address
    from .volume import Volume

log = logging.getLogger(__name__)

LOCAL, EMBEDDED, REMOTE, FLEET = "local", "embedded", "remote", "fleet"
AUTO = "auto"
ENV_VAR = "NVIDIA_CLARA_TRTISURI"

#: why the address was chosen, when the user did not name it
NAMED, FROM_ENV, FROM_APP, NONE_NAMED = "named", f"${ENV_VAR}", "the app's ip/port", "no server named"


@dataclass(frozen=True)
class ServerChoice:
    """Where a run goes. ``addresses`` is set for ``remote`` (one) and ``fleet`` (several);
    ``reason`` says why (named, ``$NVIDIA_CLARA_TRTISURI``, the app's ip/port, no server named, or
    why the embedded server cannot run); ``fallback`` marks a local run that replaced it."""

    kind: str
    addresses: tuple[Address, ...] = ()
    protocol: str = "http"
    reason: str = NAMED
    fallback: bool = False

    @property
    def address(self) -> Address | None:
        return self.addresses[0] if self.addresses else None

    def describe(self) -> str:
        if self.kind == LOCAL:
            text = "local runtime (in this process)"
            return f"{text}: {self.reason}" if self.fallback else text
        if self.kind == EMBEDDED:
            return "embedded Triton (started on first use)"
        where = (f"Triton at {self.addresses[0]}" if self.kind == REMOTE
                 else f"Triton fleet of {len(self.addresses)} ({', '.join(map(str, self.addresses))})")
        return where if self.reason == NAMED else f"{where} ({self.reason})"


def split_servers(server: str | Sequence[str] | None) -> list[str]:
    """What the user named, as a list: one address, several (a list, or separated by commas), or none."""
    if server is None:
        return []
    parts = [server] if isinstance(server, str) else list(server)
    return [piece.strip() for part in parts for piece in str(part).split(",") if piece.strip()]


def choose_server(server: str | Sequence[str] | None = None, *, inferer: Any = None, protocol: str | None = None,
                  environ: Mapping[str, str] | None = None) -> ServerChoice:
    """THE server policy (see the module docstring). ``inferer``: the app's inferer (its ``address``
    and ``protocol``); ``protocol``: the user's ``--protocol`` (wins over the app's)."""
    from .triton.address import parse_address

    environ = os.environ if environ is None else environ
    proto = (protocol or getattr(inferer, "protocol", None) or "http").lower()
    if proto not in ("http", "grpc"):
        raise ServerError(f"protocol {proto!r}: use http or grpc.")
    parts = split_servers(server)
    reason = NAMED
    if len(parts) == 1 and parts[0].lower() == LOCAL:
        return ServerChoice(LOCAL, protocol=proto)
    if len(parts) == 1 and parts[0].lower() == EMBEDDED:
        missing = _embedded_missing()
        if missing:
            raise ServerError(f"the embedded Triton server was asked for, but {missing}.")
        return ServerChoice(EMBEDDED, protocol=proto)
    if not parts or (len(parts) == 1 and parts[0].lower() == AUTO):
        parts, reason = split_servers(environ.get(ENV_VAR)), FROM_ENV
        if not parts and getattr(inferer, "address", None):
            parts, reason = [inferer.address], FROM_APP
        if not parts:
            missing = _embedded_missing()
            if missing:
                return ServerChoice(LOCAL, protocol=proto, reason=missing, fallback=True)
            return ServerChoice(EMBEDDED, protocol=proto, reason=NONE_NAMED)
    lowered = [p.lower() for p in parts]
    if len(parts) > 1 and any(p in (LOCAL, EMBEDDED, AUTO) for p in lowered):
        raise ServerError(f"servers {', '.join(parts)}: {LOCAL!r}, {EMBEDDED!r} and {AUTO!r} cannot be mixed with "
                          "Triton addresses.")
    addresses = tuple(parse_address(part, proto) for part in parts)
    if len({str(a) for a in addresses}) != len(addresses):
        raise ServerError(f"servers {', '.join(map(str, addresses))}: an endpoint is named twice.")
    return ServerChoice(REMOTE if len(addresses) == 1 else FLEET, addresses, proto, reason)


def _embedded_missing() -> str | None:
    from .triton.locations import embedded_server_missing

    return embedded_server_missing()


class Backend(Protocol):
    """What every backend gives an entry point: models to open and a listing of what it serves."""

    @property
    def description(self) -> str: ...

    def open(self, repository: Path, model_name: str, *, input_name: str = "", output_name: str = "",
             version: str = "", inferer: Any = None, model_loader: Any = None) -> ModelHandle: ...

    def list_models(self, repository: Path | None = None) -> list[str]: ...

    def close(self) -> None: ...


#: gives a running embedded server for a model repository (the napari widget keeps one per repository)
EmbeddedProvider = Callable[[Path], Any]


def open_backend(choice: ServerChoice, *, threads: int | None = None, runtime: str | None = None,
                 repository: Path | None = None, transport: Mapping[str, Any] | None = None,
                 embedded: EmbeddedProvider | None = None) -> Backend:
    """The backend for ``choice``. ``runtime`` runs the model locally or in the embedded server (an
    external Triton serves with what it has); ``transport``: :class:`TransportOptions` keywords
    (timeouts, retries, shared memory, TLS files, headers); ``repository``: the models an embedded
    server serves (default: the bundled ones); ``embedded``: a provider of an already running
    embedded server (kept running after the backend closes)."""
    options = {k: v for k, v in dict(transport or {}).items() if k not in ("protocol", "runtime")}
    runtime = runtime or dict(transport or {}).get("runtime")
    if choice.kind == LOCAL:
        from .backends.local import LocalBackend

        if choice.fallback:
            log.warning("%s: running the model in this process instead; name a Triton server with --server "
                        "host:port (HTTP/gRPC, any platform) to use one.", choice.reason)
        return LocalBackend(threads=threads, runtime=runtime)
    if choice.kind == EMBEDDED:
        from .apps import bundled_model_repository, refuse_python_models
        from .backends.triton import EmbeddedBackend

        repository = Path(repository) if repository is not None else bundled_model_repository()
        refuse_python_models(repository)  # an app's python-backend model is code: only when trusted

        return EmbeddedBackend(repository, protocol=choice.protocol, threads=threads, runtime=runtime,
                               provider=embedded, **options)
    if choice.kind == FLEET:
        from .backends.fleet import FleetBackend

        return FleetBackend(list(choice.addresses), **options)
    from .backends.triton import TritonBackend

    return TritonBackend(choice.addresses[0], **options)


@dataclass
class Session:
    """One app on one server or runtime: the model is opened once, then segments any number of volumes.

    ``with Session(app, "local") as session: labels = session.segment(volume).labels``. ``server`` is
    what the user named (see :func:`choose_server`), or pass a ready ``choice``; ``transport`` holds
    the connection options (``protocol`` included), ``runtime`` the local or embedded runtime.
    """

    app: App
    server: str | Sequence[str] | None = None
    choice: ServerChoice | None = None
    #: the app's config with a user's changes (the napari panel's overrides); default: the app's own
    config: InferenceConfig | None = None
    threads: int | None = None
    runtime: str | None = None
    transport: dict[str, Any] = field(default_factory=dict)
    embedded: EmbeddedProvider | None = None
    backend: Backend | None = field(default=None, init=False)
    model: ModelHandle | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = self.app.config
        if self.choice is None:
            self.choice = choose_server(self.server, inferer=self.config.inferer,
                                        protocol=self.transport.get("protocol"))

    def _resolved(self) -> tuple[InferenceConfig, ServerChoice]:
        """The config and the server choice :meth:`__post_init__` set (None only if a caller cleared one)."""
        if self.config is None or self.choice is None:
            raise UsageError("Session: its config and server choice are set when it is made; do not set them to None.")
        return self.config, self.choice

    @property
    def description(self) -> str:
        if self.model is not None:
            backend = self.backend
            return str(getattr(self.model, "description", "") or (backend.description if backend is not None else ""))
        return self._resolved()[1].describe()

    def open(self) -> Session:
        """Start or reach the server and open the app's model (checked against its loader's config)."""
        if self.model is not None:
            return self
        config, choice = self._resolved()
        config.require_model()
        log.info("server: %s", choice.describe())
        self.backend = open_backend(choice, threads=self.threads, runtime=self.runtime,
                                    repository=self.app.model_repository, transport=self.transport,
                                    embedded=self.embedded)
        try:
            self.model = self.backend.open(self.app.model_repository, config.model_name,
                                           input_name=config.inferer.input_name,
                                           output_name=config.inferer.output_name,
                                           version=config.inferer.model_version, inferer=config.inferer,
                                           model_loader=config.model_loader)
        except BaseException:
            self.close()
            raise
        log.info("model %s opened on %s", config.model_name, self.description)
        return self

    def segment(self, volume: Volume, **options: Any) -> Segmentation:
        """:func:`~clara_napari.core.pipeline.segment_volume` with this session's model
        (``progress``, ``cancel``, ``stage``, ``strict``, ``probabilities``)."""
        from .pipeline import segment_volume

        self.open()
        if self.model is None:
            raise ServerError(f"{self.app.name}: no model is open (the session was closed meanwhile).")
        return segment_volume(volume, self._resolved()[0], self.model, **options)

    def close(self) -> None:
        model, backend, self.model, self.backend = self.model, self.backend, None, None
        try:
            if model is not None:
                model.close()
        finally:
            if backend is not None:
                backend.close()

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
