"""The Triton Inference widget reads its fields into the panel model (clara_napari/napari/_panel_model.py):
the overrides it runs with are validated (a bad window never reaches a server), a malformed header is
refused, the state it saves is the model's. A real viewer; no run reaches a server."""
from __future__ import annotations

import json

import pytest

napari = pytest.importorskip("napari")

from napari_helpers import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

from napari.layers import Labels  # noqa: E402

from clara_napari.napari._panel import REPLACE  # noqa: E402
from test_napari_widget import crop, open_with_widget, settings_dir  # noqa: E402,F401

pytestmark = [pytest.mark.gui]


def test_the_widget_runs_with_validated_overrides(make_napari_viewer, crop, settings_dir):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
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


def test_the_saved_settings_are_the_models(make_napari_viewer, crop, settings_dir):
    viewer, image, widget = open_with_widget(make_napari_viewer, crop["path"], crop["quick_app"])
    widget._rerun.value = REPLACE
    widget._headers.value = "Authorization=Bearer SECRET"
    widget._probabilities.value = True
    saved = json.loads((settings_dir / "napari_widget.json").read_text())
    assert saved == widget.state().settings()
    assert saved["rerun"] == REPLACE and saved["probabilities"] == "yes" and "SECRET" not in json.dumps(saved)
