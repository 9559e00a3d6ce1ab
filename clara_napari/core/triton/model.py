"""A model on a Triton server, ready to predict batches (a window-engine predictor).

Wire rules: tensors always travel as binary (never JSON); system shared memory is used
automatically when the server is on this host and accepts it (else the network); several
requests are in flight (the engine's ``requests_in_flight``), each on one of the model's own
long-lived threads with its own client and its own shared-memory slot (so descriptors and
threads stay flat however many volumes a session runs); inputs are cast to the model's
datatype; each HTTP request stays under the server's input size limit (:func:`request_slices`);
shapes and batch sizes are checked against the server's model config before the first request.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
import time
import weakref
from typing import Any

import numpy as np

from ..backends.base import pick_tensor
from ..errors import ModelMismatchError, ServerError
from ..interrupts import stop_requested
from ..model_repository import ModelSpec
from .address import Address, TransportOptions, request_headers
from .client import (
    POLL_S,
    close_client,
    close_thread_client,
    make_client,
    repository_index,
    server_model_spec,
    wait_ready,
    with_client,
    with_server_key,
)
from .errors import (
    RETRYABLE,
    ModelNotFound,
    ModelNotReady,
    ServerTimeout,
    ServerUnavailable,
    client_errors,
    error_type,
    reason,
    server_error,
)
from .shm import ShmSlot, SlotPool, region_errors
from .threads import ClientThreads

log = logging.getLogger(__name__)

#: Triton >= 2.59 refuses HTTP inputs above 64 MB by default; stay well under it.
HTTP_MAX_REQUEST_BYTES = 60 * 1024 * 1024


def request_slices(items: int, item_bytes: int, *, max_batch_size: int,
                   byte_limit: int | None = None) -> list[slice]:
    """How a batch of ``items`` (``item_bytes`` each) is split into requests.

    ``max_batch_size`` 0: the model takes no batch axis, one request per item. Else requests of at
    most ``max_batch_size`` items (no limit when negative) and, with ``byte_limit`` (HTTP without
    shared memory), at most that many bytes, but always at least one item. An empty batch is one
    (empty) request.
    """
    if max_batch_size == 0:
        return [slice(i, i + 1) for i in range(items)]
    step = items
    if byte_limit is not None:
        step = max(1, min(step, byte_limit // max(item_bytes, 1)))
    if max_batch_size > 0:
        step = min(step, max_batch_size)
    if step >= items:
        return [slice(0, items)]
    return [slice(i, min(i + step, items)) for i in range(0, items, step)]


def output_shape(dims: tuple[int, ...] | list[int], item_in: tuple[int, ...], batch: int | None) -> tuple[int, ...] | None:
    """The output's shape for an input item of shape ``item_in`` (``batch`` items, None: unbatched),
    or None when a variable dim cannot be inferred (then no shared memory for the output)."""
    shape = []
    for i, d in enumerate(dims):
        if d > 0:
            shape.append(d)
        elif len(dims) == len(item_in) and i > 0:
            shape.append(item_in[i])   # spatial sizes follow the input's (a scanning-window model)
        else:
            return None
    return ((batch,) if batch is not None else ()) + tuple(shape)


class TritonModel:
    """A model on a Triton server, ready to predict batches; also a context manager (closes)."""

    def __init__(self, address: Address, name: str, *, version: str = "", input_name: str = "",
                 output_name: str = "", in_flight: int = 2, timeout_s: float = 120.0,
                 options: TransportOptions | None = None, expected: ModelSpec | None = None) -> None:
        self.address = address
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self.options = options or TransportOptions()
        self._local = threading.local()
        self._pool = SlotPool()
        self.description = f"Triton at {address}"
        self._user_headers = request_headers(self.options, address)
        self.in_flight = in_flight
        self._closing = False
        # every client lives on one of these threads for the model's whole life (an HTTP client
        # belongs to the thread, its gevent hub, that made it): the engine's per-volume threads
        # only hand requests over, so nothing is left behind per volume
        self._workers = ClientThreads(in_flight, name="clara-triton",
                                      on_exit=functools.partial(close_thread_client, self._local))
        self._finalizer = weakref.finalize(self, self._workers.close, 0.0)
        try:
            self._workers.call(self._set_up, input_name, output_name, expected)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TritonModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-up -------------------------------------------------------------------------------
    def _set_up(self, input_name: str, output_name: str, expected: ModelSpec | None) -> None:
        address, name, version = self.address, self.name, self.version
        client = self._client()
        wait_ready(client, address, self.options.ready_timeout_s, self.headers)
        self._wait_model(client)
        self.spec = server_model_spec(client, address, name, version, self.headers)
        if expected is not None:
            check_same_model(expected, self.spec, address)
        where = f"Triton at {address}, model {name!r}"
        self.input = pick_tensor(self.spec.inputs, input_name, "input", where)
        self.output = pick_tensor(self.spec.outputs, output_name, "output", where)
        self.max_batch_size = self.spec.max_batch_size
        self.use_shm = self._probe_shm(client) if self.options.shared_memory is not False else False
        self.transport = f"{address.protocol}{'+shm' if self.use_shm else ''}"

    @property
    def headers(self) -> dict[str, str] | None:
        """The user's headers (and basic auth from the URL), plus the key when the server is this
        process's embedded one (looked up on every call: a restarted embedded server has a new key)."""
        return with_server_key(self.address, self._user_headers)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = make_client(self.address, self.options, self.timeout_s)
            self._local.client = client
        return client

    def _wait_model(self, client: Any) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while True:
            try:
                if client.is_model_ready(self.name, self.version, headers=self.headers):
                    return
            except client_errors() as exc:
                kind = error_type(exc)
                if issubclass(kind, (ServerUnavailable, ServerTimeout)):
                    raise kind(f"Triton at {self.address}: lost the connection ({reason(exc)}).") from None
            names, states = self._index(client)
            if self.name not in names:
                raise ModelNotFound(f"Triton at {self.address} has no model {self.name!r} "
                                    f"(available: {', '.join(sorted(names)) or 'none'}).")
            if time.monotonic() >= deadline:
                raise ModelNotReady(f"Triton at {self.address}: model {self.name!r} is not ready "
                                    f"(state {states.get(self.name, 'UNKNOWN')}).")
            time.sleep(POLL_S)

    def _index(self, client: Any) -> tuple[set[str], dict[str, str]]:
        try:
            entries = repository_index(client, self.address, self.headers)
        except ServerError:
            return set(), {}
        return {e["name"] for e in entries}, {e["name"]: e["state"] for e in entries}

    def _probe_shm(self, client: Any) -> bool:
        """Shared memory only on this host, and only if the server accepts a registration."""
        if not self.address.is_local or self.options.shared_memory is False:
            return False
        try:
            probe = ShmSlot(client, 64, 64, self.headers)
        except (*client_errors(), *region_errors()) as exc:
            if self.options.shared_memory:
                log.warning("Triton at %s refused shared memory (%s); using the network", self.address, reason(exc))
            else:
                log.info("shared memory not available with %s (%s); using the network", self.address, reason(exc))
            return False
        probe.close(client, self.headers)
        return True

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._workers.call(self._predict, batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self._closing:   # queued by an engine thread that was abandoned (Ctrl-C, an error)
            raise ServerError(f"Triton at {self.address}: model {self.name!r} was closed.")
        batch = np.ascontiguousarray(batch, dtype=self.input.dtype)
        limit = HTTP_MAX_REQUEST_BYTES if self.address.protocol == "http" and not self.use_shm else None
        parts = request_slices(len(batch), batch[0].nbytes if len(batch) else 1,
                               max_batch_size=self.max_batch_size, byte_limit=limit)
        if self.max_batch_size == 0:
            return np.stack([self._infer_retrying(batch[part][0], batched=False) for part in parts])
        if len(parts) == 1:
            return self._infer_retrying(batch, batched=True)
        return np.concatenate([self._infer_retrying(batch[part], batched=True) for part in parts])

    def _infer_retrying(self, array: np.ndarray, *, batched: bool) -> np.ndarray:
        for attempt in itertools.count():
            try:
                return self._infer(array, batched)
            except RETRYABLE as exc:
                if attempt >= self.options.retries:
                    raise
                delay = 0.5 * 2 ** attempt
                log.warning("%s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                self._reset_client()
                self._pool.drop(self._client(), self.headers)  # a restarted server knows none of our regions
        raise AssertionError("unreachable")

    def _reset_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        close_client(client)

    def _infer(self, array: np.ndarray, batched: bool) -> np.ndarray:
        client = self._client()
        module = self._module()
        infer_input = module.InferInput(self.input.name, list(array.shape), self.input.datatype)
        item_in = array.shape[1:] if batched else array.shape
        out_shape = output_shape(self.output.dims, item_in, array.shape[0] if batched else None)
        slot = None
        try:
            if self.use_shm and out_shape is not None:
                out_bytes = int(np.prod(out_shape)) * self.output.dtype.itemsize
                try:
                    slot = self._pool.acquire(client, array.nbytes, out_bytes, self.headers)
                except (*client_errors(), *region_errors()) as exc:
                    raise server_error(exc, f"Triton at {self.address}: cannot register shared memory "
                                            f"({reason(exc)}).") from exc
                import tritonclient.utils.shared_memory as shm

                shm.set_shared_memory_region(slot.handles[0], [array])
                infer_input.set_shared_memory(slot.names[0], array.nbytes)
                requested = module.InferRequestedOutput(self.output.name)
                requested.set_shared_memory(slot.names[1], out_bytes)
            elif self.address.protocol == "http":
                infer_input.set_data_from_numpy(array, binary_data=True)
                requested = module.InferRequestedOutput(self.output.name, binary_data=True)
            else:
                infer_input.set_data_from_numpy(array)
                requested = module.InferRequestedOutput(self.output.name)
            result = self._call(client, infer_input, requested)
            if slot is not None:
                import tritonclient.utils.shared_memory as shm

                return np.array(shm.get_contents_as_numpy(slot.handles[1], self.output.dtype, out_shape))
            output = result.as_numpy(self.output.name)
            if output is None:
                raise ModelMismatchError(f"Triton at {self.address}: model {self.name!r} returned no output "
                                         f"{self.output.name!r}.")
            return output
        finally:
            if slot is not None:
                self._pool.release(slot, client, self.headers)

    def _call(self, client: Any, infer_input: Any, requested: Any) -> Any:
        headers = self.headers
        try:
            if self.address.protocol == "grpc":
                return client.infer(self.name, [infer_input], model_version=self.version, outputs=[requested],
                                    client_timeout=self.timeout_s, headers=headers)
            import gevent

            # a hard deadline: geventhttpclient's network timeout does not cover every wait (a
            # request to a model being unloaded was seen to hang for good without it)
            with gevent.Timeout(self.timeout_s, TimeoutError(f"timed out after {self.timeout_s:.0f} s")):
                return client.infer(self.name, [infer_input], model_version=self.version, outputs=[requested],
                                    headers=headers)
        except Exception as exc:   # whatever the client raises becomes a typed ServerError
            kind = error_type(exc)
            if issubclass(kind, ServerTimeout):
                message = f"model {self.name!r} did not answer within {self.timeout_s:.0f} s."
            elif issubclass(kind, ServerUnavailable):
                message = f"lost the connection during inference ({reason(exc)})."
            else:
                message = f"model {self.name!r} failed ({reason(exc)})."
            raise kind(f"Triton at {self.address}: {message}") from exc

    def _module(self) -> Any:
        if self.address.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def close(self) -> None:
        """End the model's threads (each closes its client and its gevent hub once its current
        request returns; requests still queued are refused), then unregister and unlink the
        shared memory, which no thread uses any more. Stopped by a signal: a request in flight is
        not waited for (0.2 s), and the regions are only unlinked (no calls to a server about to be killed)."""
        self._closing = True
        stopping = stop_requested()
        idle = self._workers.close(timeout_s=0.2 if stopping else self.timeout_s)
        slots = self._pool.take_all()
        if slots and idle and not stopping:
            def release(client: Any) -> None:
                for slot in slots:
                    slot.close(client, self.headers)
            gone: tuple[type[BaseException], ...] = (ServerError, *client_errors())
            try:
                with_client(self.address, self.options, min(self.timeout_s, 10.0), release)
            except gone:
                for slot in slots:   # the server is gone: unlink at least
                    slot.close()
        elif slots:   # stopping, or a request stuck on a slot: unlink the names, keep the mappings
            for slot in slots:
                slot.unlink()
        self._finalizer.detach()


def check_same_model(expected: ModelSpec, served: ModelSpec, address: Address) -> None:
    """The model loader's ``config.pbtxt`` must describe the model the server runs."""
    def signature(spec: ModelSpec) -> dict:
        return {"name": spec.name, "max_batch_size": spec.max_batch_size,
                "inputs": [t.describe() for t in spec.inputs], "outputs": [t.describe() for t in spec.outputs]}

    mine, theirs = signature(expected), signature(served)
    for key in mine:
        if mine[key] != theirs[key]:
            raise ModelMismatchError(
                f"{expected.path}: {key} is {json.dumps(mine[key])}, the model on Triton at {address} has "
                f"{json.dumps(theirs[key])}.")
