"""Triton backend and embedded server, against the real tritonserver of the nvidia-pytriton wheel."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.core.apps import DATA_ROOT, resolve_app
from clara_napari.core.backends.local import LocalBackend
from clara_napari.core.errors import ModelMismatchError, ServerError
from clara_napari.core.model_repository import read_model_config
from clara_napari.core.triton.address import TransportOptions, parse_address
from clara_napari.core.triton.embedded import EmbeddedServer
from clara_napari.core.triton.model import TritonModel
from clara_napari.core.triton.processes import group_members as _group_members
from clara_napari.core.windows import sliding_window

from helpers.slow_model import slow_model_program

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
MODELS = DATA_ROOT / "sample_data" / "models"
BRAIN = "deepbet_brain_t1"

SLOW_CONFIG = '''
name: "slow_double"
backend: "python"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }} ]
'''


def _shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


OURS = f"clara_napari_{os.getpid()}_"   # other processes on the machine may run servers too


@pytest.fixture(scope="module")
def server():
    with EmbeddedServer(MODELS) as srv:
        yield srv


@pytest.fixture(scope="module")
def brain_input():
    """A real T1 crop, preprocessed by the app, channels first: [1, 96, 80, 72]."""
    app = resolve_app("brain_extraction_t1")
    from clara_napari.core.transforms import Sample

    sample = Sample(image=cn.read_volume(DATA_ROOT / "sample_data/mr_t1/mr_t1_colin27.nii.gz"))
    for transform in app.config.pre_transforms:
        transform(sample)
    image = sample["image"]
    return np.ascontiguousarray(image[:, 40:136, 60:140, 50:122])


@pytest.fixture(scope="module")
def local_probabilities(brain_input):
    model = LocalBackend(threads=2).open(MODELS, BRAIN)
    return sliding_window(brain_input, model, (64, 64, 64), overlap=0.5, blending="gaussian", batch_size=2)


def _triton(server, protocol="http", **options):
    port = server.ports[protocol]
    address = parse_address(f"{protocol}://127.0.0.1:{port}")
    return TritonModel(address, BRAIN, options=TransportOptions(ready_timeout_s=10, **options), in_flight=2)


@pytest.mark.parametrize("protocol,shm", [("http", True), ("http", False), ("grpc", True), ("grpc", False)])
def test_transports_match_local(server, brain_input, local_probabilities, protocol, shm):
    model = _triton(server, protocol, shared_memory=None if shm else False)
    try:
        assert model.use_shm is shm
        stitched = sliding_window(brain_input, model, (64, 64, 64), overlap=0.5, blending="gaussian",
                                  batch_size=2, in_flight=3)
    finally:
        model.close()
    assert stitched.shape == local_probabilities.shape == (2, 96, 80, 72)
    assert np.abs(stitched - local_probabilities).max() <= 1e-4


def test_shm_regions_released(server, brain_input):
    before = {n for n in _shm_regions() if n.startswith(OURS)}
    model = _triton(server, "http")
    sliding_window(brain_input, model, (64, 64, 64), overlap=0.25, batch_size=1, in_flight=2)
    assert {n for n in _shm_regions() if n.startswith(OURS)} - before, "shared memory was used"
    model.close()
    assert {n for n in _shm_regions() if n.startswith(OURS)} == before


def test_concurrent_jobs_agree(server, brain_input, local_probabilities):
    results, errors = [], []

    def job(protocol):
        try:
            model = _triton(server, protocol)
            try:
                results.append(sliding_window(brain_input, model, (64, 64, 64), overlap=0.5, blending="gaussian",
                                              batch_size=1, in_flight=4))
            finally:
                model.close()
        except Exception as exc:  # noqa: BLE001  (reported below)  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(p,)) for p in ("http", "grpc", "http")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(results) == 3
    for stitched in results:
        # batches of 1 here, of 2 for the reference: OpenVINO's f32 kernels differ by ~3e-4 between them
        assert np.abs(stitched - local_probabilities).max() <= 1e-3


def test_model_metadata_checks(server):
    model = _triton(server)
    try:
        assert model.max_batch_size == 4
        assert model.input.name == "x" and model.input.datatype == "FP32"
        with pytest.raises(ModelMismatchError, match="batch_size 8 is larger"):
            sliding_window(np.zeros((1, 64, 64, 64), np.float32), model, (64, 64, 64), batch_size=8)
    finally:
        model.close()


def test_unknown_model_lists_available(server):
    address = parse_address(f"127.0.0.1:{server.ports['http']}")
    with pytest.raises(ServerError, match=r"has no model 'nope' \(available: .*deepbet_brain_t1"):
        TritonModel(address, "nope", options=TransportOptions(ready_timeout_s=5))


def test_model_loader_mismatch_names_both_sides(server, tmp_path):
    text = (MODELS / BRAIN / "config.pbtxt").read_text().replace("dims: [ 2, -1, -1, -1 ]", "dims: [ 3, -1, -1, -1 ]")
    (tmp_path / "config.pbtxt").write_text(text)
    expected = read_model_config(tmp_path / "config.pbtxt")
    address = parse_address(f"127.0.0.1:{server.ports['http']}")
    with pytest.raises(ModelMismatchError) as info:
        TritonModel(address, BRAIN, options=TransportOptions(ready_timeout_s=5), expected=expected)
    message = str(info.value)
    assert "config.pbtxt" in message and "[3, -1, -1, -1]" in message and "[2, -1, -1, -1]" in message


def test_unreachable_server_fails_fast():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"127.0.0.1:{port} was not ready within 1 s"):
        TritonModel(parse_address(f"127.0.0.1:{port}"), BRAIN, options=TransportOptions(ready_timeout_s=1))
    assert time.monotonic() - start < 10


class _V1Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path.startswith("/api/"):
            body = json.dumps({"id": "inference:0", "version": "1.9.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_trtis_v1_server_is_named():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _V1Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerError, match="TRTIS v1 API.*v2 protocol"):
            TritonModel(parse_address(f"127.0.0.1:{httpd.server_address[1]}"), BRAIN,
                        options=TransportOptions(ready_timeout_s=5))
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A python-backend model that sleeps, and shared memory restricted (so registration is refused)."""
    repo = tmp_path_factory.mktemp("slow_repo")
    (repo / "slow_double" / "1").mkdir(parents=True)
    (repo / "slow_double" / "config.pbtxt").write_text(SLOW_CONFIG.format())
    (repo / "slow_double" / "1" / "model.py").write_text(slow_model_program(1.5))
    extra = ["--http-restricted-api=shared-memory:clara-key=secret",
             "--grpc-restricted-protocol=shared-memory:clara-key=secret"]
    with EmbeddedServer(repo, extra_args=extra) as srv:
        yield srv


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_timeout_is_honoured(slow_server, protocol):
    address = parse_address(f"{protocol}://127.0.0.1:{slow_server.ports[protocol]}")
    model = TritonModel(address, "slow_double", timeout_s=0.5, options=TransportOptions(ready_timeout_s=10, retries=0))
    threads_before = threading.active_count()
    try:
        start = time.monotonic()
        with pytest.raises(ServerError, match="did not answer within"):
            model.predict(np.ones((1, 1, 4, 4, 4), np.float32))
        assert time.monotonic() - start < 5
    finally:
        model.close()
    assert threading.active_count() <= threads_before + 1


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_refused_shared_memory_falls_back_to_network(slow_server, protocol):
    address = parse_address(f"{protocol}://127.0.0.1:{slow_server.ports[protocol]}")
    before = {n for n in _shm_regions() if n.startswith(OURS)}
    model = TritonModel(address, "slow_double", timeout_s=30, options=TransportOptions(ready_timeout_s=10))
    try:
        assert model.use_shm is False
        assert model.transport == protocol
        out = model.predict(np.full((2, 1, 4, 4, 4), 3.0, np.float32))
        assert out.shape == (2, 1, 4, 4, 4) and np.all(out == 6.0)
    finally:
        model.close()
    assert {n for n in _shm_regions() if n.startswith(OURS)} == before


def test_embedded_server_leaves_nothing_behind(tmp_path):
    srv = EmbeddedServer(MODELS).start()
    pid, workdir = srv.process.pid, srv.workdir
    assert srv.running and set(srv.model_names()) == {BRAIN, "lung_air_density"}
    assert _group_members(pid)
    assert len(srv.shm_regions) == 2 and all(Path("/dev/shm", r).exists() for r in srv.shm_regions)
    srv.stop()
    assert not _group_members(pid)
    assert not workdir.exists()
    assert not [r for r in srv.shm_regions if Path("/dev/shm", r).exists()]


def test_startup_failure_quotes_the_log(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
                                                      'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
                                                      'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (tmp_path / "broken" / "1" / "model.py").write_text("raise ImportError('this model is broken on purpose')\n")
    with pytest.raises(ServerError, match="broken on purpose|failed to load"):
        EmbeddedServer(tmp_path, startup_timeout=60).start()


def test_cli_embedded_and_named_server_agree(tmp_path, server, monkeypatch):
    """The lung app end to end: embedded server, then a separate server via NVIDIA_CLARA_TRTISURI."""
    from clara_napari.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DATA_ROOT / "sample_data/chest_ct/chest_ct_lung2.nii.gz", inputs)
    assert main(["run", "--app", "lung_ct", "--input", str(inputs), "--output", str(tmp_path / "a"),
                 "--no-publish", "--logs", str(tmp_path / "logs")]) == 0
    monkeypatch.setenv("NVIDIA_CLARA_TRTISURI", f"127.0.0.1:{server.ports['http']}")
    assert main(["run", "--app", "lung_ct", "--input", str(inputs), "--output", str(tmp_path / "b"),
                 "--no-publish", "--logs", str(tmp_path / "logs")]) == 0
    a = cn.read_volume(tmp_path / "a" / "chest_ct_lung2.mhd")
    b = cn.read_volume(tmp_path / "b" / "chest_ct_lung2.mhd")
    source = cn.read_volume(inputs / "chest_ct_lung2.nii.gz")
    assert a.same_grid(source) and b.same_grid(source)
    assert np.array_equal(a.array, b.array)
    litres = a.physical_volume_ml() / 1000
    assert 2.5 < litres < 7.0, litres
    half = a.array.shape[2] // 2
    assert a.array[:, :, :half].sum() > 0.3 * a.array.sum() and a.array[:, :, half:].sum() > 0.3 * a.array.sum()


def test_backend_resolution_order(monkeypatch):
    from clara_napari.core.session import choose_server

    app = resolve_app("brain_extraction_t1")
    monkeypatch.setenv("NVIDIA_CLARA_TRTISURI", "envhost:9000")
    assert choose_server(None, inferer=app.config.inferer).address.url == "envhost:9000"
    assert choose_server("grpc://named:7001", inferer=app.config.inferer).address.protocol == "grpc"
    monkeypatch.delenv("NVIDIA_CLARA_TRTISURI")
    inferer = app.config.inferer.model_copy(update={"ip": "cfghost", "port": 8123})
    assert choose_server(None, inferer=inferer).address.url == "cfghost:8123"


@pytest.mark.parametrize("text,expected", [
    ("localhost:8000", ("localhost", 8000, "http", False)),
    ("grpc://h:8001", ("h", 8001, "grpc", False)),
    ("https://h", ("h", 8000, "http", True)),
    ("grpcs://h:9", ("h", 9, "grpc", True)),
    ("h", ("h", 8000, "http", False)),
])
def test_parse_address(text, expected):
    a = parse_address(text)
    assert (a.host, a.port, a.protocol, a.tls) == expected


@pytest.mark.parametrize("text", ["ftp://h:1", "h:notaport", "h:70000", "://x"])
def test_parse_address_errors(text):
    with pytest.raises(ServerError):
        parse_address(text)


def test_no_orphans_after_embedded_run(tmp_path):
    """segment() with the embedded server starts and stops it: nothing of it is left."""
    volume = cn.read_volume(DATA_ROOT / "sample_data/mr_t1/mr_t1_colin27.nii.gz")
    crop = volume.with_array(np.ascontiguousarray(volume.array[40:136, 60:156, 40:136]))
    before = set(os.listdir("/proc"))
    app = resolve_app("brain_extraction_t1")
    config = app.config_path.read_text().replace("[160, 160, 160]", "[96, 96, 96]")
    (tmp_path / "config_inference.json").write_text(config)
    labels = cn.segment(crop, app=tmp_path / "config_inference.json")
    assert labels.same_grid(crop) and labels.array.dtype == np.uint8 and labels.array.any()
    time.sleep(0.5)
    new = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    leftovers = []
    for pid in new:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if b"tritonserver" in cmd and parent == os.getpid():
            leftovers.append(pid)
    assert not leftovers
