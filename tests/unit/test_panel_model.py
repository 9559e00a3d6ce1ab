"""The Triton Inference panel's Qt-free model (clara_napari/napari/_panel_model.py, _panel_export.py): validated overrides,
state ↔ settings, job creation, result layers as plain data, export. No Qt, no display, no server."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from clara_napari.core.apps import DATA_ROOT, App, resolve_app
from clara_napari.core.components import INFERERS, VolumeWriter
from clara_napari.core.errors import ClaraNapariError, ConfigError, ServerError
from clara_napari.core.pipeline import Segmentation
from clara_napari.core.volume import Volume, read_volume
from clara_napari.napari._geometry import KEY, volume_to_layer
from clara_napari.napari._panel import NEW_LAYER, REPLACE
from clara_napari.napari._panel_export import export_folder, plan_export, write_export
from clara_napari.napari._panel_model import (
    CONFIG_FILE,
    LayerSpec,
    Overrides,
    PanelState,
    SourceLayer,
    Transport,
    app_defaults,
    configured,
    error_message,
    make_job,
    measure_layer,
    prepare_result,
    server_line,
)
from clara_napari.napari._runner import ServerInfo

BUNDLED = DATA_ROOT / "config" / "brain_extraction_t1"


def test_the_model_imports_no_qt_and_no_napari():
    import subprocess

    code = ("import sys; import clara_napari.napari._panel_model, clara_napari.napari._panel_export; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', "
            "'PySide2', 'PySide6', 'magicgui', 'superqt', 'vispy')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def app_with(folder: Path, **inferer_args) -> App:
    config = json.loads((BUNDLED / "config_inference.json").read_text())
    config["inferer"]["args"].update(inferer_args)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config_inference.json").write_text(json.dumps(config))
    return resolve_app(folder)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> App:
    return app_with(tmp_path_factory.mktemp("app"), roi_size=[96, 96, 96])


# -- overrides are validated as the config's own args -----------------------------------------
@pytest.mark.parametrize(("changes", "field"), [
    ({"roi_size": (7, 7)}, "roi_size"),
    ({"roi_size": (64, 0, 64)}, "roi_size"),
    ({"overlap": 1.5}, "overlap"),
    ({"overlap": -0.1}, "overlap"),
    ({"blending": "linear"}, "blending"),
    ({"requests_in_flight": 0}, "requests_in_flight"),
])
def test_bad_overrides_raise_a_config_error_naming_the_field(app, changes, field):
    with pytest.raises(ConfigError) as caught:
        configured(app.config, Overrides(**changes))
    assert caught.value.json_path == f"inferer.args.{field}"
    assert "\n" not in str(caught.value) and field in str(caught.value)


def test_good_overrides_apply_to_a_copy(app):
    before = app.config.inferer.model_dump()
    config = configured(app.config, Overrides(roi_size=(64, 48, 32), overlap=0.5, blending="gaussian",
                                              requests_in_flight=5))
    inferer = config.inferer
    assert (inferer.roi_size, inferer.overlap, inferer.blending, inferer.requests_in_flight) == \
        ([64, 48, 32], 0.5, "gaussian", 5)
    assert inferer.config_name == app.config.inferer.config_name and type(inferer) is type(app.config.inferer)
    assert app.config.inferer.model_dump() == before          # the app's own config is untouched
    assert configured(app.config, Overrides(roi_size=(0, 0, 0))).inferer.roi_size is None   # the model's own
    assert configured(app.config).inferer.model_dump() == before                          # nothing asked: as is
    assert configured(app.config, Overrides(model=app.config.model_name)).model_loader == app.config.model_loader
    other = configured(app.config, model="another_model")
    assert other.model_name == "another_model" and other.model_loader is None


def test_monai_style_blending_sets_its_mode(app):
    sliding = INFERERS.build({"name": "SlidingWindowInferer", "args": {"roi_size": [32, 32, 32], "mode": "constant"}},
                             "inferer")
    config = dataclasses.replace(app.config, inferer=sliding)
    changed = configured(config, Overrides(blending="gaussian", overlap=0.5)).inferer
    assert (changed.mode, changed.blending, changed.overlap) == ("gaussian", "gaussian", 0.5)
    with pytest.raises(ConfigError) as caught:
        configured(config, Overrides(overlap=1.0))
    assert caught.value.json_path == "inferer.args.overlap"


def test_app_defaults_fill_the_fields(app):
    defaults = app_defaults(app)
    assert defaults.scanning and defaults.roi_size == (96, 96, 96) and defaults.overlap == app.config.inferer.overlap
    assert defaults.model == app.config.model_name and defaults.requests_in_flight == app.config.inferer.requests_in_flight
    assert app.name in defaults.summary and "brain" in defaults.summary.lower()


# -- state and settings -----------------------------------------------------------------------
def test_state_from_settings_keeps_only_valid_choices():
    apps = ["brain_extraction_t1", "lung"]
    state = PanelState.from_settings({"app": "lung", "protocol": "gRPC", "rerun": REPLACE, "probabilities": "yes",
                                      "server": "grpc://h:8001", "export_dir": ".", "app_file": ""}, apps)
    assert (state.app, state.protocol, state.rerun, state.probabilities, state.server, state.export_dir) == \
        ("lung", "gRPC", REPLACE, True, "grpc://h:8001", "")
    assert state.replaces
    odd = PanelState.from_settings({"app": "gone", "protocol": "smoke", "rerun": "?", "server": ""}, apps)
    assert (odd.app, odd.protocol, odd.rerun, odd.server, odd.probabilities) == \
        ("brain_extraction_t1", "HTTP", NEW_LAYER, "auto", False)
    assert PanelState.from_settings({}, []).app == CONFIG_FILE
    again = PanelState.from_settings(state.settings(), apps)
    assert again == state
    secret = dataclasses.replace(state, transport=Transport(headers="Authorization=Bearer X"))
    assert "Bearer" not in json.dumps(secret.settings())


def test_state_resolves_its_app(tmp_path, app):
    assert PanelState(app="brain_extraction_t1").resolve_app().name == "brain_extraction_t1"
    assert PanelState(app=CONFIG_FILE, app_file=str(app.config_path)).resolve_app().config_path == app.config_path
    with pytest.raises(ConfigError, match="config_inference.json"):
        PanelState(app=CONFIG_FILE, app_file=".").resolve_app()
    with pytest.raises(ClaraNapariError):
        PanelState(app=CONFIG_FILE, app_file=str(tmp_path / "missing.json")).resolve_app()


def test_make_job_carries_the_state(app):
    state = PanelState(server="grpc://127.0.0.1:9", protocol="gRPC", probabilities=True,
                       overrides=Overrides(roi_size=(32, 32, 32), overlap=0.5),
                       transport=Transport(headers="x-key=abc; Authorization=Bearer T", ssl_ca="."))
    volume = Volume(np.zeros((4, 5, 6), np.float32))
    job = make_job(state, app, volume, ready_timeout_s=3.0)
    assert (job.server, job.protocol, job.probabilities, job.ready_timeout_s) == ("grpc://127.0.0.1:9", "gRPC", True, 3.0)
    assert job.config.inferer.roi_size == [32, 32, 32] and job.config.inferer.overlap == 0.5
    assert job.transport == {"headers": {"x-key": "abc", "Authorization": "Bearer T"}}
    assert job.volume is volume and job.app is app and not job.cancel.cancelled
    with pytest.raises(ServerError):
        make_job(dataclasses.replace(state, transport=Transport(headers="no equals sign")), app, volume,
                 ready_timeout_s=3.0)
    with pytest.raises(ConfigError):
        make_job(dataclasses.replace(state, overrides=Overrides(overlap=1.5)), app, volume, ready_timeout_s=3.0)


# -- result layers as plain data --------------------------------------------------------------
def labelled(shape=(6, 7, 8)) -> tuple[Volume, Volume]:
    image = Volume(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), spacing=(0.5, 2.0, 1.5),
                   origin=(-10.25, 3.5, 7.125), direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 2:5, 3:6] = 1
    return image, image.with_array(labels, path=None)


def layer_like(volume: Volume, name: str, kind: str = "image") -> SimpleNamespace:
    """What the model reads of a napari layer: its data and plain transform attributes."""
    data, kwargs = volume_to_layer(volume, name=name, kind=kind)
    return SimpleNamespace(data=data, name=name, metadata=kwargs["metadata"], scale=kwargs["scale"],
                           translate=kwargs["translate"], rotate=kwargs["rotate"], shear=np.zeros(3),
                           affine=SimpleNamespace(affine_matrix=np.eye(4)))


def test_prepare_result_builds_the_layers_as_data(app):
    image, labels = labelled()
    source = SourceLayer.of(layer_like(image, "t1"))
    probabilities = image.with_array(np.linspace(0, 1, labels.array.size, dtype=np.float32).reshape(labels.array.shape),
                                     path=None)
    segmentation = Segmentation(source=image, outputs=[(VolumeWriter(), labels)], model="deepbet",
                                probabilities=probabilities)
    reference = volume_to_layer(labels)[0]
    result = prepare_result(segmentation, source, app, name="t1 result", reference=reference,
                            reference_name="the reference layer 'gt'")
    spec = result.labels
    assert spec.kwargs["name"] == "t1 result" and spec.colormap == app.config.label_table()
    record = spec.kwargs["metadata"][KEY]
    assert record["spacing"] == [0.5, 2.0, 1.5] and record["origin"] == [-10.25, 3.5, 7.125]
    assert record["model"] == "deepbet" and record["source_layer"] == "t1"
    assert record["labels"] == {str(v): [n, app.config.label_table().colors()[v]] for v, n in app.config.label_names().items()}
    assert list(spec.kwargs["features"]["name"]) == ["background", *app.config.label_names().values()]
    assert result.voxels == 27 and result.ml == pytest.approx(27 * 1.5 / 1000)
    assert [(m.value, m.voxels, m.dice) for m in result.measurements] == [(1, 27, 1.0)]
    assert result.replace is None and result.layer is None
    scores = result.probabilities
    assert scores is not None and scores.colormap == "magma" and scores.kwargs["name"] == "t1 result probabilities"
    assert scores.kwargs["contrast_limits"] == (0.0, 1.0) and scores.kwargs["metadata"][KEY]["kind"] == "image"
    # a reference on another grid: measured without Dice; a re-run (replace): only the voxels that change
    previous = np.zeros_like(spec.data)
    again = prepare_result(segmentation, source, app, previous=previous, reference=np.zeros((2, 2, 2)))
    assert again.measurements[0].dice is None
    indices, values = again.replace
    assert indices[0].size == 27 and set(values.tolist()) == {1}


def test_a_layer_made_in_code_gets_the_source_transform(app):
    image, labels = labelled((3, 4, 5))
    source = SourceLayer("drawn", (3, 4, 5), {"scale": np.array([2.0, 1.0, 1.0]), "translate": np.array([1.0, 2.0, 3.0]),
                                              "rotate": np.eye(3), "affine": np.eye(4), "shear": np.zeros(3),
                                              "metadata": {}, "name": "drawn"})
    plain = Volume(image.array, spacing=(1.0, 1.0, 2.0))
    spec = prepare_result(Segmentation(source=plain, outputs=[(VolumeWriter(), plain.with_array(labels.array))]),
                          source, app).labels
    assert spec.data is not None and np.array_equal(spec.kwargs["scale"], [2.0, 1.0, 1.0])
    assert np.array_equal(spec.kwargs["translate"], [1.0, 2.0, 3.0]) and spec.kwargs["name"].startswith("drawn ")


def test_measure_layer_sees_edits(app):
    image, labels = labelled()
    layer = layer_like(labels, "result", kind="labels")
    layer.data = layer.data.copy()
    layer.data[0, 0, 0] = 1                      # a painted voxel
    rows = measure_layer(layer, layer.metadata, app.config.label_names(), reference=layer_like(labels, "gt"))
    assert rows[0].voxels == 28 and rows[0].dice == pytest.approx(2 * 27 / 55)


# -- export -----------------------------------------------------------------------------------
def test_export_writes_everything_with_the_source_geometry(tmp_path, app):
    image, labels = labelled()
    source, result = layer_like(image, "t1 image"), layer_like(labels, "t1 result", kind="labels")
    assert export_folder(".") is None and export_folder("") is None and export_folder(tmp_path) == tmp_path
    rows = measure_layer(result, source.metadata, app.config.label_names())
    plan = plan_export(tmp_path / "out", source, result, app, "deepbet", rows)
    expected = labels.array.copy()
    result.data[:] = 0                             # painting after the snapshot changes nothing written
    written = write_export(plan)
    assert written[0] == tmp_path / "out" / "output" / "t1_image.mhd" and all(p.exists() for p in written)
    back = read_volume(written[0])
    assert back.spacing == image.spacing and back.origin == image.origin and back.direction == image.direction
    assert np.array_equal(back.array, expected)
    assert (tmp_path / "out" / "output" / "t1_image.measurements.csv").read_text().splitlines()[1].startswith("1,")
    assert any(p.parent.name == "publish" for p in written)
    moved = layer_like(labels, "moved", kind="labels")
    moved.data = moved.data[:-1]
    with pytest.raises(ClaraNapariError):
        plan_export(tmp_path / "other", source, moved, app, "deepbet", rows)
    assert not (tmp_path / "other").exists()


def test_server_line_and_error_message():
    info = ServerInfo("http://127.0.0.1:8000", "embedded Triton 2.41", {"deepbet": "READY"})
    assert server_line(info, "deepbet") == ("embedded Triton 2.41 ready at http://127.0.0.1:8000 · model deepbet "
                                            "READY · runs on this machine (CPU, onnxruntime)")
    assert "not on the server" in server_line(info, "other")
    local = ServerInfo("local", "local onnxruntime (in this process)", {"deepbet": "local"})
    assert server_line(local, "deepbet").endswith("runs on this machine (in process)")
    assert error_message(ConfigError("bad", path="a.b")) == "a.b: bad"
    assert error_message(OSError("disk full")) == "OSError: disk full"
    assert isinstance(LayerSpec(np.zeros(1), {}).kwargs, dict)
