"""The bench rows through the embedded Triton server: HTTP, gRPC, shared memory and JSON inputs."""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import numpy as np

from .plan import Job, ServerInfo, Skip
from .runners import EngineRunner


class TritonRunner(EngineRunner):
    def __init__(self, job: Job, server: ServerInfo | None, protocol: str, shm: bool, name: str) -> None:
        super().__init__(job, server)
        self.protocol, self.shm, self.name = protocol, shm, name

    def predictor(self):
        from ..core.triton.address import Address, TransportOptions
        from ..core.triton.model import TritonModel

        if self.server is None:
            raise Skip("no server")
        address = Address(self.server.host, self.server.ports[self.protocol], self.protocol)
        model = TritonModel(address, self.job.model_name, in_flight=self.job.in_flight, timeout_s=600.0,
                            options=TransportOptions(shared_memory=self.shm))
        self.note = f"{model.transport}, {self.job.in_flight} in flight"
        if model.use_shm != self.shm:
            self.note += " (shared memory refused by the server!)"
        return model


class JsonPredictor:
    """Windows sent as JSON numbers (``binary_data=False``), the output back as binary."""

    def __init__(self, host: str, port: int, model_name: str, in_flight: int = 2) -> None:
        from ..core.triton.address import Address, TransportOptions
        from ..core.triton.client import close_thread_client
        from ..core.triton.model import TritonModel
        from ..core.triton.threads import ClientThreads

        probe = TritonModel(Address(host, port, "http"), model_name, options=TransportOptions(shared_memory=False))
        self.spec, self.input, self.output = probe.spec, probe.input, probe.output
        self.max_batch_size = probe.max_batch_size
        probe.close()
        self.url, self.model_name = f"{host}:{port}", model_name
        self.host, self.port = host, port
        self._local = threading.local()
        # clients on long-lived threads, closed with their gevent hubs (as TritonModel does)
        self._workers = ClientThreads(in_flight, name="clara-bench-json",
                                      on_exit=functools.partial(close_thread_client, self._local))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._workers.call(self._predict, batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        import tritonclient.http as thttp

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = thttp.InferenceServerClient(self.url, network_timeout=600.0,
                                                                      connection_timeout=60.0)
        batch = np.ascontiguousarray(batch, dtype=self.input.dtype)
        infer_input = thttp.InferInput(self.input.name, list(batch.shape), self.input.datatype)
        infer_input.set_data_from_numpy(batch, binary_data=False)
        requested = thttp.InferRequestedOutput(self.output.name, binary_data=True)
        from ..core.triton.keys import server_headers  # the embedded server's key (its APIs are restricted)

        headers = server_headers(self.host, self.port) or None
        return client.infer(self.model_name, [infer_input], outputs=[requested],
                            headers=headers).as_numpy(self.output.name)

    def close(self) -> None:
        self._workers.close()


class JsonRunner(EngineRunner):
    name = "json-transport"

    def predictor(self):
        if self.server is None:
            raise Skip("no server")
        self.note = f"HTTP, JSON inputs, binary outputs, {self.job.in_flight} in flight"
        return JsonPredictor(self.server.host, self.server.ports["http"], self.job.model_name, self.job.in_flight)


@contextlib.contextmanager
def embedded_server(job: Job, needed: bool = True) -> Iterator[ServerInfo | None]:
    """A fresh embedded Triton server on the job's repository, runtime and threads for the Triton rows
    (``None`` when not ``needed``); stopped on leaving."""
    if not needed:
        yield None
        return
    from ..core.triton.embedded import EmbeddedServer

    embedded = EmbeddedServer(job.repository, threads=job.threads, runtime=job.runtime or None).start()
    try:
        process = embedded.process
        assert process is not None, "a started server has its process"
        yield ServerInfo(embedded.host, dict(embedded.ports), process.pid, embedded.version)
    finally:
        embedded.stop()
