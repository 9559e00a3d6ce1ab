"""The Triton Inference widget reads its fields into the panel model (clara_napari/napari/_panel_model.py):
the overrides it runs with are validated (a bad window never reaches a server), a malformed header is
refused, the state it saves is the model's. A real viewer; no run reaches a server."""
from __future__ import annotations

import json

import pytest

napari = pytest.importorskip("napari")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

import numpy as np  # noqa: E402
from napari.layers import Labels  # noqa: E402

from clara_napari.core.apps import DATA_ROOT  # noqa: E402
from clara_napari.core.volume import Volume, write_volume  # noqa: E402
from clara_napari.napari._panel import REPLACE  # noqa: E402
from clara_napari.napari._panel_model import CONFIG_FILE  # noqa: E402

pytestmark = [pytest.mark.gui]


@pytest.fixture
def settings_dir(tmp_path, monkeypatch):
    """Widget settings go to a temporary folder, never the user's."""
    folder = tmp_path / "settings"
    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def panel(make_napari_viewer, tmp_path, settings_dir):
    """A viewer with a small image (real file, read by the plugin) and the panel on the bundled brain app
    with a 96³ window."""
    image = Volume(np.arange(16 * 20 * 24, dtype=np.int16).reshape(16, 20, 24), spacing=(1.0, 1.0, 1.5))
    path = write_volume(image, tmp_path / "small.nii.gz")
    config = json.loads((DATA_ROOT / "config" / "brain_extraction_t1" / "config_inference.json").read_text())
    config["inferer"]["args"].update(roi_size=[96, 96, 96])
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "config_inference.json").write_text(json.dumps(config))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="clara-napari")
    _, widget = viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
    widget._app.value = CONFIG_FILE
    widget._app_file.value = str(tmp_path / "app" / "config_inference.json")
    return viewer, widget


def test_the_widget_runs_with_validated_overrides(panel):
    viewer, widget = panel
    widget._server.value = "local"
    state = widget.state()
    assert state.overrides.roi_size == (96, 96, 96) and state.server == "local"
    assert state.overrides.overlap == widget._overlap.value and state.overrides.blending == widget._blending.value

    widget._roi[1].value = 0                       # one axis left at 0: not a window
    assert widget.run() is None and not widget.running
    assert widget._status.value.startswith("failed:") and "inferer.args.roi_size" in widget._status.value
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]

    widget._roi[1].value = 96
    widget._headers.value = "no equals sign"       # a malformed header: refused before any connection
    assert widget.run() is None and not widget.running
    assert widget._status.value.startswith("failed:") and "KEY=VALUE" in widget._status.value


def test_the_saved_settings_are_the_models(panel, settings_dir):
    viewer, widget = panel
    widget._rerun.value = REPLACE
    widget._headers.value = "Authorization=Bearer SECRET"
    widget._probabilities.value = True
    saved = json.loads((settings_dir / "napari_widget.json").read_text())
    assert saved == widget.state().settings()
    assert saved["rerun"] == REPLACE and saved["probabilities"] == "yes" and "SECRET" not in json.dumps(saved)
