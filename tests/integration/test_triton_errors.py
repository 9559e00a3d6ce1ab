"""Typed transport errors against the real embedded Triton (2.51): each failure Triton or the
network produces maps to its type from the status code, and the model retries on the types."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.triton.address import TransportOptions, parse_address
from clara_napari.core.triton.embedded import EmbeddedServer
from clara_napari.core.triton.errors import (
    ModelNotFound,
    RequestRefused,
    ServerTimeout,
    ServerUnavailable,
    SharedMemoryLost,
    client_errors,
    error_type,
)
from clara_napari.core.triton.locations import free_port
from clara_napari.core.triton.model import TritonModel

pytestmark = pytest.mark.triton
MODELS = DATA_ROOT / "sample_data" / "models"
BRAIN = "deepbet_brain_t1"


@pytest.fixture(scope="module")
def server():
    with EmbeddedServer(MODELS, models=[BRAIN]) as srv:
        yield srv


def _client(protocol: str, port: int):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(f"127.0.0.1:{port}")


def _raised(call) -> BaseException:
    try:
        call()
    except client_errors() as exc:
        return exc
    raise AssertionError("the call succeeded")


def _input(module, array):
    tensor = module.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_refused_port_is_unavailable(protocol):
    _, client = _client(protocol, free_port())
    assert error_type(_raised(client.get_model_repository_index)) is ServerUnavailable


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_restricted_api_without_the_key_is_refused_not_unavailable(server, protocol):
    _, client = _client(protocol, server.ports[protocol])
    assert error_type(_raised(client.get_model_repository_index)) is RequestRefused


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_is_not_found(server, protocol):
    module, client = _client(protocol, server.ports[protocol])
    x = np.zeros((1, 1, 32, 32, 32), np.float32)
    exc = _raised(lambda: client.infer("no_such_model", [_input(module, x)], headers=server.auth_headers(protocol)))
    assert error_type(exc) is ModelNotFound


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_shared_memory_region_is_lost(server, protocol):
    module, client = _client(protocol, server.ports[protocol])
    tensor = module.InferInput("x", [1, 1, 32, 32, 32], "FP32")
    tensor.set_shared_memory("clara_napari_never_registered", 4 * 32 ** 3)
    out = module.InferRequestedOutput("y")
    out.set_shared_memory("clara_napari_never_registered", 8 * 32 ** 3)
    exc = _raised(lambda: client.infer(BRAIN, [tensor], outputs=[out], headers=server.auth_headers(protocol)))
    assert error_type(exc) is SharedMemoryLost


def test_grpc_deadline_is_a_timeout(server):
    module, client = _client("grpc", server.ports["grpc"])
    x = np.zeros((4, 1, 64, 64, 64), np.float32)
    exc = _raised(lambda: client.infer(BRAIN, [_input(module, x)], client_timeout=0.001,
                                       headers=server.auth_headers("grpc")))
    assert error_type(exc) is ServerTimeout


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_handle_names_a_missing_model(server, protocol):
    address = parse_address(f"{protocol}://127.0.0.1:{server.ports[protocol]}")
    with pytest.raises(ModelNotFound, match=BRAIN):
        TritonModel(address, "no_such_model", options=TransportOptions(ready_timeout_s=5))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_registers_again_when_the_server_forgot_its_regions(server, protocol, caplog):
    """The server loses our shared-memory registrations (as after a restart): the request fails
    with SharedMemoryLost, the model retries on that type with fresh regions, the result is right."""
    address = parse_address(f"{protocol}://127.0.0.1:{server.ports[protocol]}")
    x = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    with TritonModel(address, BRAIN, options=TransportOptions(ready_timeout_s=10, shared_memory=True)) as model:
        assert model.use_shm
        first = model.predict(x)
        _, client = _client(protocol, server.ports[protocol])
        client.unregister_system_shared_memory(headers=server.auth_headers(protocol))   # all of them
        with caplog.at_level(logging.WARNING):
            again = model.predict(x)
    assert np.array_equal(first, again)
    assert any("retrying" in r.getMessage() and "shared memory region" in r.getMessage() for r in caplog.records)
