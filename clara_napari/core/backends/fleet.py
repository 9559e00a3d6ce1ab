"""Several Triton endpoints serving one run: windows spread client-side over a server fleet.

Every endpoint (HTTP or gRPC, mixed) is opened as a :class:`~clara_napari.core.triton.model.TritonModel` and must serve
the same model config (inputs, outputs, dims, ``max_batch_size``) as the first one before any
window is sent. Each endpoint lends ``requests_in_flight`` *tickets*; an engine thread takes the
next free ticket, so a faster server hands its tickets back sooner and gets more windows (a pull
queue, no fixed split). When an endpoint fails (lost connection, timeout) after its own retries,
its tickets are withdrawn and the batch goes to another endpoint; the run fails only when none is
left. The engine stitches batches in window order whatever server answered, so the result is the
same, bit for bit, as a single-server run of the same model.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelMismatchError, ServerError
from ..model_repository import ModelSpec
from ..triton.address import Address
from ..triton.errors import ENDPOINT_FAILURES
from ..triton.model import TritonModel
from .triton import TritonBackend

log = logging.getLogger(__name__)

#: how long a batch waits for a free ticket before the run is declared stuck (every endpoint busy)
TICKET_WAIT_S = 600.0


def model_signature(spec: ModelSpec) -> dict:
    """What two endpoints must agree on: inputs, outputs (names, types, dims) and the batch limit."""
    return {"max_batch_size": spec.max_batch_size,
            "inputs": [t.describe() for t in spec.inputs], "outputs": [t.describe() for t in spec.outputs]}


def should_fail_over(exc: BaseException) -> bool:
    """An endpoint problem (gone, unreachable, too slow), not a problem of the batch itself."""
    return isinstance(exc, ENDPOINT_FAILURES)


class FleetBackend:
    """Opens one model on every endpoint of ``servers`` (a list of Triton addresses)."""

    def __init__(self, servers: Sequence[Address | str], **options: Any) -> None:
        """``servers``: the endpoints :func:`~clara_napari.core.session.choose_server` decided (checked
        there: no ``local``, none twice)."""
        if not servers:
            raise ServerError("no Triton server named (give --server at least once).")
        self.backends = [TritonBackend(s, **options) for s in servers]
        self.servers = [str(b.address) for b in self.backends]

    @property
    def description(self) -> str:
        return f"Triton fleet of {len(self.backends)} ({', '.join(self.servers)})"

    def open(self, repository, model_name: str, **kwargs) -> FleetModel:
        models: list[TritonModel] = []
        try:
            for backend in self.backends:
                models.append(backend.open(repository, model_name, **kwargs))
            return FleetModel(models)
        except BaseException:
            for model in models:
                model.close()
            raise

    def list_models(self, repository=None) -> list[str]:
        rows: list[str] = []
        for backend in self.backends:
            rows += backend.list_models(repository)
        return rows

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


class FleetModel:
    """A model handle (and window-engine predictor) spreading batches over several endpoints."""

    def __init__(self, models: Sequence[TritonModel]) -> None:
        if not models:
            raise ServerError("a Triton fleet needs at least one endpoint.")
        self.models = list(models)
        first = self.models[0]
        mine = model_signature(first.spec)
        for other in self.models[1:]:
            theirs = model_signature(other.spec)
            for key in mine:
                if mine[key] != theirs[key]:
                    raise ModelMismatchError(
                        f"model {first.name!r}: {key} is {mine[key]} on Triton at {first.address} but "
                        f"{theirs[key]} on Triton at {other.address}; every --server must serve the same model.")
            if (other.input.name, other.output.name) != (first.input.name, first.output.name):
                raise ModelMismatchError(f"model {first.name!r}: Triton at {other.address} picks other tensors "
                                         f"than Triton at {first.address}.")
        self.spec, self.input, self.output = first.spec, first.input, first.output
        self.max_batch_size = first.max_batch_size
        #: requests in flight for the whole fleet: the engine keeps this many batches running
        self.requests_in_flight = sum(max(1, m.in_flight) for m in self.models)
        self._tickets: queue.Queue[int] = queue.Queue()
        for index, model in enumerate(self.models):
            for _ in range(max(1, model.in_flight)):
                self._tickets.put(index)
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        #: batches each endpoint answered (by index in ``models``): the spread, for logs and tests
        self.served = [0] * len(self.models)
        self.description = "Triton fleet: " + ", ".join(f"{m.address} ({m.transport})" for m in self.models)

    @property
    def alive(self) -> list[TritonModel]:
        return [m for i, m in enumerate(self.models) if i not in self._dead]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        last: BaseException | None = None
        deadline = time.monotonic() + TICKET_WAIT_S
        while True:
            with self._lock:
                if len(self._dead) == len(self.models):
                    names = ", ".join(str(m.address) for m in self.models)
                    raise ServerError(f"every Triton endpoint of the run failed ({names}); last: {last or 'see the log'}") from last
            try:
                index = self._tickets.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise ServerError(f"no Triton endpoint answered within {TICKET_WAIT_S:.0f} s "
                                      f"({', '.join(str(m.address) for m in self.models)}).") from last
                continue
            if index in self._dead:   # a ticket of an endpoint that failed meanwhile: withdraw it
                continue
            model = self.models[index]
            try:
                result = model.predict(batch)
            except ServerError as exc:
                if not should_fail_over(exc):
                    self._tickets.put(index)
                    raise
                with self._lock:
                    newly = index not in self._dead
                    self._dead.add(index)
                if newly:
                    log.warning("%s Its windows go to the other endpoints (%d left).", exc,
                                len(self.models) - len(self._dead))
                last = exc
                continue
            except BaseException:
                self._tickets.put(index)
                raise
            with self._lock:
                self.served[index] += 1
            self._tickets.put(index)
            return result

    def close(self) -> None:
        for model in self.models:
            model.close()
