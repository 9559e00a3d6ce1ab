"""The Triton transport package without a server: request splitting, output shapes, the
shared-memory pool (real POSIX regions), error mapping (the client libraries' own exception
classes), addresses, keys, the generated model repository and the package's import layering."""
from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clara_napari.core.errors import ServerError
from clara_napari.core.triton.address import (
    Address,
    TransportOptions,
    parse_address,
    request_headers,
)
from clara_napari.core.triton.errors import (
    ENDPOINT_FAILURES,
    RETRYABLE,
    ModelNotFound,
    ModelNotReady,
    RequestRefused,
    ServerTimeout,
    ServerUnavailable,
    SharedMemoryLost,
    error_type,
    reason,
    server_error,
    status_code,
)
from clara_napari.core.triton.model import (
    HTTP_MAX_REQUEST_BYTES,
    output_shape,
    request_slices,
)
from clara_napari.core.triton.shm import ShmSlot, SlotPool, cleanup_all_regions

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


# -- request splitting -----------------------------------------------------------------------
def _covered(parts: list[slice], items: int) -> list[int]:
    return [i for part in parts for i in range(items)[part]]


def test_http_limit_splits_big_batches():
    parts = request_slices(8, 25 * MB, max_batch_size=-1, byte_limit=HTTP_MAX_REQUEST_BYTES)
    assert [p.stop - p.start for p in parts] == [2, 2, 2, 2]     # 2 × 25 MB < 60 MB < 3 × 25 MB
    assert _covered(parts, 8) == list(range(8))


def test_no_limit_without_http_one_request():
    assert request_slices(8, 25 * MB, max_batch_size=-1, byte_limit=None) == [slice(0, 8)]


def test_item_above_the_limit_still_travels_alone():
    parts = request_slices(3, 100 * MB, max_batch_size=8, byte_limit=HTTP_MAX_REQUEST_BYTES)
    assert parts == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_max_batch_size_caps_requests():
    parts = request_slices(10, 1000, max_batch_size=4, byte_limit=HTTP_MAX_REQUEST_BYTES)
    assert parts == [slice(0, 4), slice(4, 8), slice(8, 10)]


def test_the_tighter_limit_wins():
    assert len(request_slices(10, 20 * MB, max_batch_size=8, byte_limit=60 * MB)) == 4    # 3 per request
    assert len(request_slices(10, 1 * MB, max_batch_size=3, byte_limit=60 * MB)) == 4     # 3 per request


def test_batch_size_zero_is_one_unbatched_request_per_item():
    assert request_slices(3, 1000, max_batch_size=0, byte_limit=HTTP_MAX_REQUEST_BYTES) == [
        slice(0, 1), slice(1, 2), slice(2, 3)]


def test_empty_batch_is_one_empty_request():
    assert request_slices(0, 1, max_batch_size=4) == [slice(0, 0)]


@given(items=st.integers(1, 64), item_bytes=st.integers(1, 200 * MB), max_batch=st.integers(-1, 16),
       limit=st.one_of(st.none(), st.integers(1, 100 * MB)))
def test_requests_cover_every_item_once_within_limits(items, item_bytes, max_batch, limit):
    parts = request_slices(items, item_bytes, max_batch_size=max_batch, byte_limit=limit)
    assert _covered(parts, items) == list(range(items))
    for part in parts:
        size = part.stop - part.start
        assert size >= 1
        if max_batch >= 0:
            assert size <= max(max_batch, 1)
        if limit is not None and size > 1:
            assert size * item_bytes <= limit


def test_output_shape_follows_the_input_for_variable_spatial_dims():
    assert output_shape((2, -1, -1, -1), (1, 96, 80, 72), 4) == (4, 2, 96, 80, 72)
    assert output_shape((2, 8, 8, 8), (1, 96, 80, 72), None) == (2, 8, 8, 8)
    assert output_shape((-1, 3), (1, 96, 80, 72), 2) is None          # a classifier: unknown, no shm


# -- shared memory -----------------------------------------------------------------------------
def _region(name: str) -> Path:
    return Path("/dev/shm") / name


def test_slot_regions_are_owner_only_and_sized():
    slot = ShmSlot(None, 1000, 3000)
    try:
        for name, size in zip(slot.names, (1000, 3000), strict=True):
            info = _region(name).stat()
            assert info.st_size == size
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert name.startswith(f"clara_napari_{os.getpid()}_")
    finally:
        slot.close()
    assert not any(_region(n).exists() for n in slot.names)


def test_pool_lends_returns_and_reuses():
    pool = SlotPool()
    first = pool.acquire(None, 100, 200)
    second = pool.acquire(None, 100, 200)
    assert first is not second and len(pool) == 2 and pool.idle == 0
    pool.release(first, None)
    assert pool.idle == 1
    assert pool.acquire(None, 50, 200) is first             # big enough: lent again
    pool.release(first, None)
    bigger = pool.acquire(None, 101, 200)                     # too small: closed, a new one made
    assert bigger is not first and not _region(first.names[0]).exists()
    assert len(pool) == 2
    for slot in pool.take_all():
        slot.close()
    assert len(pool) == 0 and pool.idle == 0
    assert not any(_region(n).exists() for s in (second, bigger) for n in s.names)


def test_drop_closes_idle_slots_now_and_lent_ones_on_return():
    pool = SlotPool()
    idle, lent = pool.acquire(None, 64, 64), pool.acquire(None, 64, 64)
    pool.release(idle, None)
    pool.drop(None)                                            # the server restarted
    assert pool.generation == 1
    assert not _region(idle.names[0]).exists() and _region(lent.names[0]).exists()
    pool.release(lent, None)                                   # of the old generation: closed, not kept
    assert not _region(lent.names[0]).exists()
    assert len(pool) == 0 and pool.idle == 0
    fresh = pool.acquire(None, 64, 64)
    assert fresh.generation == 1
    pool.release(fresh, None)
    assert pool.idle == 1
    for slot in pool.take_all():
        slot.close()


def test_regions_left_at_exit_are_unlinked():
    slot = ShmSlot(None, 64, 64)
    assert _region(slot.names[1]).exists()
    cleanup_all_regions()
    assert not any(_region(n).exists() for n in slot.names)


def test_data_round_trips_through_a_slot():
    import tritonclient.utils.shared_memory as shm

    slot = ShmSlot(None, 4 * 24, 4 * 24)
    try:
        data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        shm.set_shared_memory_region(slot.handles[0], [data])
        back = shm.get_contents_as_numpy(slot.handles[0], np.float32, data.shape)
        assert np.array_equal(back, data)
    finally:
        slot.close()


# -- error mapping -------------------------------------------------------------------------------
def _triton_error(message: str, status: str | None):
    from tritonclient.utils import InferenceServerException

    return InferenceServerException(msg=message, status=status)


def _rpc_error(code, details: str):
    """A grpc.RpcError as the grpc library raises it (a Call with code() and details())."""
    import grpc

    class RpcError(grpc.RpcError, grpc.Call):
        def code(self):
            return code

        def details(self):
            return details

        def debug_error_string(self):
            return details

        def initial_metadata(self):
            return None

        def trailing_metadata(self):
            return None

        def is_active(self):
            return False

        def time_remaining(self):
            return None

        def cancel(self):
            return False

        def add_callback(self, callback):
            return False

    return RpcError()


# what Triton 2.51 answered, measured against the embedded server (see core/triton/errors.py)
MEASURED = [
    (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
    ("StatusCode.UNAVAILABLE", ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                                "Failed to connect to remote host: Connection refused"), ServerUnavailable),
    ("403", "This API is restricted, expecting header 'clara-napari-key'", RequestRefused),
    ("StatusCode.UNAVAILABLE", ("This protocol is restricted, expecting header "
                                "'triton-grpc-protocol-clara-napari-key'"), RequestRefused),
    ("404", "Request for unknown model: 'nope' is not found", ModelNotFound),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' version 7 is not found", ModelNotFound),
    ("404", "Request for unknown model: 'x' has no available versions", ModelNotReady),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' has no available versions", ModelNotReady),
    ("404", "Unable to find shared memory region: 'clara_napari_1_0_in'", SharedMemoryLost),
    ("StatusCode.NOT_FOUND", "Unable to find shared memory region: 'clara_napari_1_0_in'", SharedMemoryLost),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", ServerTimeout),
    (TimeoutError("timed out"), ServerTimeout),
]


@pytest.mark.parametrize("case", MEASURED, ids=lambda c: str(c[0])[:30] + "-" + c[-1].__name__)
def test_measured_triton_answers_map_to_types(case):
    exc = case[0] if len(case) == 2 else _triton_error(case[1], case[0])
    assert error_type(exc) is case[-1]


@pytest.mark.parametrize(("code_name", "expected"), [
    ("UNAVAILABLE", ServerUnavailable), ("DEADLINE_EXCEEDED", ServerTimeout),
    ("PERMISSION_DENIED", RequestRefused), ("UNAUTHENTICATED", RequestRefused), ("INVALID_ARGUMENT", ServerError),
    ("INTERNAL", ServerError)])
def test_grpc_codes_map_raw_and_through_tritonclient(code_name, expected):
    import grpc
    from tritonclient.grpc._utils import get_error_grpc

    rpc = _rpc_error(getattr(grpc.StatusCode, code_name), "the server said so")
    assert status_code(rpc) == code_name
    assert error_type(rpc) is expected
    converted = get_error_grpc(rpc)             # what tritonclient.grpc raises for it
    assert status_code(converted) == code_name
    assert error_type(converted) is expected


@pytest.mark.parametrize(("exc", "expected"), [
    (ConnectionResetError(104, "Connection reset by peer"), ServerUnavailable),
    (BrokenPipeError(32, "Broken pipe"), ServerUnavailable),
    (OSError(113, "No route to host"), ServerUnavailable),
    (TimeoutError(110, "Connection timed out"), ServerTimeout),
    (ValueError("not a server problem"), ServerError),
])
def test_socket_errors_map_by_type(exc, expected):
    assert error_type(exc) is expected


def test_gevent_and_geventhttpclient_errors_map_by_type():
    import gevent
    from geventhttpclient.response import HTTPConnectionClosed

    assert error_type(gevent.Timeout(1.0)) is ServerTimeout
    assert error_type(HTTPConnectionClosed("connection closed.")) is ServerUnavailable


@pytest.mark.parametrize(("status", "expected"), [
    ("401", RequestRefused), ("503", ServerUnavailable), ("504", ServerTimeout), ("400", ServerError),
    ("500", ServerError)])
def test_http_statuses(status, expected):
    assert error_type(_triton_error("something", status)) is expected


def test_no_status_falls_back_to_the_text_only_then():
    assert error_type(_triton_error("Connection reset by peer", None)) is ServerUnavailable
    assert error_type(_triton_error("unexpected datatype FP64", None)) is ServerError


def test_typed_errors_are_server_errors_and_keep_their_type():
    for kind in (*ENDPOINT_FAILURES, RequestRefused, ModelNotFound):
        assert issubclass(kind, ServerError)
        assert error_type(kind("Triton at http://h:1: x.")) is kind
    made = server_error(_triton_error("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), "Triton at x: slow.")
    assert type(made) is ServerTimeout and str(made) == "Triton at x: slow."
    assert ServerTimeout not in RETRYABLE and ServerTimeout in ENDPOINT_FAILURES
    assert RequestRefused not in ENDPOINT_FAILURES and ModelNotFound not in ENDPOINT_FAILURES


def test_fleet_fails_over_on_endpoint_failures_only():
    from clara_napari.core.backends.fleet import should_fail_over

    assert should_fail_over(ServerUnavailable("Triton at a: lost the connection during inference (x)."))
    assert should_fail_over(ServerTimeout("Triton at a: model 'm' did not answer within 5 s."))
    assert not should_fail_over(RequestRefused("Triton at a: model 'm' failed (This protocol is restricted)."))
    assert not should_fail_over(ServerError("Triton at a: model 'm' failed (lost the connection)."))  # text alone


def test_reason_is_one_bounded_line():
    assert reason(_triton_error("a\nb   c", "400")) == "a b c"
    assert len(reason(RuntimeError("x" * 1000))) == 300
    assert reason(RuntimeError()) == "RuntimeError"


# -- addresses, headers, keys ------------------------------------------------------------------
@pytest.mark.parametrize(("text", "protocol", "expected"), [
    ("localhost", None, Address("localhost", 8000, "http")),
    ("grpc://10.0.0.5", None, Address("10.0.0.5", 8001, "grpc")),
    ("10.0.0.5:9001", "GRPC", Address("10.0.0.5", 9001, "grpc")),
    ("https://triton.example:443/", None, Address("triton.example", 443, "http", tls=True)),
    ("grpcs://[::1]:8001", None, Address("[::1]", 8001, "grpc", tls=True)),
])
def test_parse_address(text, protocol, expected):
    assert parse_address(text, protocol) == expected


@pytest.mark.parametrize("text", ["ftp://h:1", "h:0", "h:65536", "h:port", "http://:8000"])
def test_parse_address_refuses(text):
    with pytest.raises(ServerError, match="^.*(scheme|port|no host)"):
        parse_address(text)


def test_userinfo_becomes_basic_auth_and_is_never_shown():
    address = parse_address("https://alice:s3cr3t-pw@triton.example:8443")
    assert "s3cr3t" not in str(address) and "s3cr3t" not in repr(address)
    headers = request_headers(TransportOptions(), address)
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"alice:s3cr3t-pw").decode()}
    assert request_headers(TransportOptions(headers={"authorization": "Bearer t"}), address) == {
        "authorization": "Bearer t"}
    with pytest.raises(ServerError) as caught:
        parse_address("https://alice:s3cr3t-pw@triton.example:http")
    assert "s3cr3t" not in str(caught.value)


def test_is_local():
    assert parse_address("127.0.0.2:1").is_local and parse_address("localhost").is_local
    assert not parse_address("10.1.1.1").is_local


def test_shared_keys_open_loopback_aliases_with_the_protocol_header(monkeypatch):
    from clara_napari.core.triton import keys
    from clara_napari.core.triton.keys import (
        GRPC_KEY_HEADER,
        KEY_HEADER,
        server_headers,
        share_server_key,
    )

    monkeypatch.setattr(keys, "_SHARED_KEYS", {})   # this process's other tests keep theirs
    share_server_key("grpc://127.0.0.1:47001", "k-grpc")
    share_server_key("http://localhost:47000", "k-http")
    assert server_headers("localhost", 47001) == {GRPC_KEY_HEADER: "k-grpc"}
    assert server_headers("127.0.0.1", 47000) == {KEY_HEADER: "k-http"}
    assert server_headers("10.0.0.1", 47000) == {}


# -- the embedded server's generated repository ------------------------------------------------
def test_generated_repository_runs_our_program_file_with_our_parameters(tmp_path, model_repository):
    from clara_napari.core.triton.repository import prepare_repository
    from clara_napari.core.triton_model import MODEL_PROGRAM, PARAMETERS

    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    out, served = prepare_repository(workdir, model_repository, ["deepbet_brain_t1"], None, 2)
    assert [s.name for s in served] == ["deepbet_brain_t1"]
    program = out / "deepbet_brain_t1" / "1" / "model.py"
    assert program.read_bytes() == Path(MODEL_PROGRAM).read_bytes()
    assert stat.S_IMODE(program.stat().st_mode) == 0o600
    config = (out / "deepbet_brain_t1" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "platform" not in config
    for key in PARAMETERS:
        assert key in config


# -- layering ------------------------------------------------------------------------------------
def test_transport_imports_no_upper_layer_and_no_client_library():
    code = ("import sys, clara_napari.core.triton.embedded, clara_napari.core.triton.model, "
            "clara_napari.core.backends.triton, clara_napari.core.backends.fleet\n"
            "print(' '.join(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                                timeout=120).stdout.split())
    assert "clara_napari.core.triton.model" in loaded
    for upper in ("clara_napari.core.apps", "clara_napari.core.pipeline", "clara_napari.api", "clara_napari.cli",
                  "clara_napari.napari", "napari", "qtpy", "tritonclient", "tritonclient.grpc", "gevent", "grpc"):
        assert upper not in loaded, upper
    assert not (ROOT / "clara_napari" / "core" / "server.py").exists()
