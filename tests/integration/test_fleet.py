"""Several Triton endpoints for one run (core/backends/fleet.py), against real embedded servers."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import resolve_app
from clara_napari.core.backends.fleet import FleetBackend, FleetModel
from clara_napari.core.errors import ModelMismatchError, ServerError
from clara_napari.core.session import choose_server, open_backend
from clara_napari.core.triton.address import parse_address
from clara_napari.core.triton.embedded import EmbeddedServer
from clara_napari.core.triton.model import TritonModel

from helpers.scale_models import MODEL, write_latency_app, write_latency_model, write_volumes

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def latency_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet_app")
    # 5 x 6 x 6 windows of 16^3 with 25 % overlap and gaussian blending; 30 ms per request
    app_folder = write_latency_app(folder / "app", delay_s=0.03, roi=(16, 16, 16), overlap=0.25)
    volume_path = write_volumes(folder / "input", 1, shape=(40, 48, 56))[0]
    return resolve_app(app_folder), volume_path


@pytest.fixture(scope="module")
def two_servers(latency_app):
    app, _ = latency_app
    with EmbeddedServer(app.model_repository, threads=1) as first, \
            EmbeddedServer(app.model_repository, threads=1) as second:
        yield first, second


def test_endpoint_list_resolution():
    assert isinstance(open_backend(choose_server(["localhost:8000", "grpc://localhost:8001"])), FleetBackend)
    assert not isinstance(open_backend(choose_server(["localhost:8000"])), FleetBackend)   # one: the plain backend
    assert choose_server("localhost:8000, localhost:8001").kind == "fleet"   # the widget's comma-separated field
    with pytest.raises(ServerError, match="named twice"):
        choose_server(["localhost:8000", "http://localhost:8000"])
    with pytest.raises(ServerError, match="'local'"):
        choose_server(["local", "localhost:8000"])
    with pytest.raises(ServerError, match="no Triton server"):
        FleetBackend([])


def test_fleet_equals_one_server_and_survives_a_killed_endpoint(latency_app, two_servers):
    """Two endpoints (HTTP + gRPC), the second killed a third of the way in: the same
    probabilities and labels, bit for bit, as one server alone."""
    app, volume_path = latency_app
    first, second = two_servers
    volume = cn.read_volume(volume_path)
    single = cn.run_app(volume, app, server=first.http_url)

    killed = []

    def progress(done: int, total: int) -> None:
        if not killed and done >= total // 3:
            os.killpg(second.process.pid, signal.SIGKILL)   # abrupt: no drain, connections reset
            killed.append(done)

    backend = open_backend(choose_server([first.http_url, second.grpc_url]), transport={"retries": 1})
    try:
        model = backend.open(app.model_repository, MODEL, inferer=app.config.inferer,
                             model_loader=app.config.model_loader)
        try:
            from clara_napari.core.pipeline import segment_volume

            spread = segment_volume(volume, app.config, model, progress=progress)
            assert killed, "the second server was never killed"
            assert model.served[1] > 0 and model.served[0] > model.served[1]
            assert [m.address for m in model.alive] == [parse_address(first.http_url)]
        finally:
            model.close()
    finally:
        backend.close()
        second.stop()
    np.testing.assert_array_equal(spread.labels.array, single.labels.array)
    assert spread.labels.spacing == single.labels.spacing and spread.labels.origin == single.labels.origin
    assert 0 < int(single.labels.array.sum()) < single.labels.array.size   # not a trivial all-0 / all-1 map


def test_fleet_probabilities_bit_for_bit(latency_app, two_servers):
    """The stitched float probabilities (gaussian blending) do not depend on which server answered."""
    from clara_napari.core.windows import sliding_window

    app, volume_path = latency_app
    first = two_servers[0]
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, size=(1, 40, 36, 30)).astype(np.float32)
    one = TritonModel(parse_address(first.http_url), MODEL)
    both = FleetModel([TritonModel(parse_address(first.http_url), MODEL),
                       TritonModel(parse_address(first.grpc_url), MODEL, in_flight=3)])
    try:
        reference = sliding_window(image, one, (16, 16, 16), overlap=0.5, blending="gaussian", in_flight=2)
        spread = sliding_window(image, both, (16, 16, 16), overlap=0.5, blending="gaussian",
                                in_flight=both.requests_in_flight)
    finally:
        one.close()
        both.close()
    assert both.requests_in_flight == 5 and all(n > 0 for n in both.served)
    assert reference.dtype == spread.dtype == np.float32
    assert np.array_equal(reference, spread)


def test_endpoints_must_serve_the_same_model(tmp_path):
    """A server whose model takes other batches than the first one is refused before any window."""
    repository = tmp_path / "models"
    write_latency_model(repository, name="sigmoid_a", max_batch=4, delay_s=0.0)
    write_latency_model(repository, name="sigmoid_b", max_batch=2, delay_s=0.0)
    with EmbeddedServer(repository, threads=1) as server:
        address = parse_address(server.http_url)
        models = [TritonModel(address, "sigmoid_a"), TritonModel(address, "sigmoid_b")]
        try:
            with pytest.raises(ModelMismatchError, match="max_batch_size is 4 on Triton at .* but 2 on Triton at"):
                FleetModel(models)
        finally:
            for model in models:
                model.close()


def test_every_endpoint_down_fails_with_one_sentence(latency_app, tmp_path):
    from clara_napari.core.triton.locations import free_port

    app, volume_path = latency_app
    dead = [f"127.0.0.1:{free_port()}", f"grpc://127.0.0.1:{free_port()}"]
    with pytest.raises(ServerError, match=r"Triton at http://127\.0\.0\.1:\d+ was not ready"):
        cn.run_app(volume_path, app, server=dead, ready_timeout_s=1)


def test_cli_repeated_server(latency_app, two_servers, tmp_path, capsys, restore_root_logging):
    app, volume_path = latency_app
    first = two_servers[0]   # its HTTP and gRPC endpoints: two endpoints (the second server may be gone)
    out = tmp_path / "out"
    code = main(["run", "--app", str(app.folder), "--input", str(volume_path.parent), "--output", str(out),
                 "--no-publish", "--logs", str(tmp_path / "logs"), "--server", first.http_url, "--server", first.grpc_url])
    assert code == 0, capsys.readouterr().err
    [output] = sorted(out.glob("*.mhd"))
    written = cn.read_volume(output)
    reference = cn.run_app(volume_path, app, server=first.grpc_url).labels
    np.testing.assert_array_equal(written.array, reference.array)


def test_widget_runner_takes_comma_separated_servers(latency_app, two_servers):
    """The napari widget's server field: 'a, b' runs on both endpoints (its worker-thread runner, no Qt)."""
    from clara_napari.napari._runner import Job, connect, run_job

    app, volume_path = latency_app
    first = two_servers[0]
    volume = cn.read_volume(volume_path)
    field = f"{first.http_url}, {first.grpc_url}"
    info = connect(field, "HTTP", app.model_repository)
    assert info.description.startswith("Triton fleet of 2") and info.where == "2 servers"
    assert info.models.get(MODEL) == "READY"
    outcome = run_job(Job(volume=volume, app=app, config=app.config, server=field))
    assert outcome.error is None, outcome.error
    single = cn.run_app(volume, app, server=first.http_url)
    np.testing.assert_array_equal(outcome.segmentation.labels.array, single.labels.array)
    assert outcome.segmentation.backend.startswith("Triton fleet: ")


def test_every_endpoint_lost_mid_run_fails_in_one_sentence(latency_app):
    """The only server behind both endpoints killed mid-run: one ServerError naming the endpoints,
    within the bounded retries (no hang, no partial result)."""
    from clara_napari.core.pipeline import segment_volume

    app, volume_path = latency_app
    volume = cn.read_volume(volume_path)
    server = EmbeddedServer(app.model_repository, threads=1).start()
    killed = []

    def progress(done: int, total: int) -> None:
        if not killed and done >= 4:
            os.killpg(server.process.pid, signal.SIGKILL)
            killed.append(done)

    backend = open_backend(choose_server([server.http_url, server.grpc_url]), transport={"retries": 0, "timeout_s": 10})
    try:
        model = backend.open(app.model_repository, MODEL, inferer=app.config.inferer)
        try:
            with pytest.raises(ServerError, match=r"every Triton endpoint of the run failed \(http://127\.0\.0\.1:\d+, "
                                                  r"grpc://127\.0\.0\.1:\d+\); last: Triton at "):
                segment_volume(volume, app.config, model, progress=progress)
        finally:
            model.close()
    finally:
        backend.close()
        server.stop()
    assert killed
