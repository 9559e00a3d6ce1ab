"""Jupyter: ``clara_napari.show``/``add_to_viewer`` and the quick-start notebook, executed with nbclient."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from helpers.viewer import ensure_display  # noqa: E402

if ensure_display() is None:
    raise RuntimeError("napari is installed but there is no X display and no Xvfb to start one "
                       "(apt-get install xvfb libgl1-mesa-dri); the GUI tests cannot run.")

import clara_napari as cn  # noqa: E402
from clara_napari.core.volume import read_volume, write_volume  # noqa: E402

from helpers import assert_same_geometry, make_volume  # noqa: E402

pytestmark = pytest.mark.gui
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_show_and_add_to_viewer_are_top_level_names(make_napari_viewer, tmp_path):
    from clara_napari import notebook

    assert cn.show is notebook.show and cn.add_to_viewer is notebook.add_to_viewer
    volume = make_volume((4, 5, 6), spacing=(0.5, 0.6, 2.0), origin=(1.0, 2.0, 3.0))
    path = write_volume(volume, tmp_path / "vol.nrrd")
    viewer = make_napari_viewer()
    image = cn.add_to_viewer(viewer, path)                     # a path works too
    assert image.name == "vol" and tuple(image.scale) == (2.0, 0.6, 0.5) and tuple(image.translate) == (3.0, 2.0, 1.0)
    labels = cn.add_to_viewer(viewer, read_volume(path).with_array(np.ones(volume.array.shape, np.uint8)), kind="labels")
    assert labels.name == "vol labels" and np.array_equal(labels.scale, image.scale)
    with pytest.raises(ValueError):
        cn.add_to_viewer(viewer, volume, kind="points")
    [only_labels] = cn.show(viewer, labels=volume.with_array(np.zeros(volume.array.shape, np.uint8)))
    assert only_labels.name.endswith("labels")


@pytest.mark.triton
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch, model_repository):
    """Acceptance 3: open the sample, segment through the embedded server, show in napari, export."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(tmp_path / "settings"))   # the kernel inherits it
    # No `%gui qt` in the test kernel: ipykernel's Qt event-loop hook can miss an execute request
    # when cells arrive back to back (as nbclient sends them) and then idles in the Qt loop for ever.
    # Interactively napari turns it on and the notebook is the same.
    monkeypatch.setenv("NAPARI_APPLICATION_IPY_INTERACTIVE", "false")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # if a cell hangs, the kernel writes every thread's stack here before the cell times out
    stacks = tmp_path / "kernel_stacks.txt"
    notebook.cells.insert(0, nbformat.v4.new_code_cell(
        f"import faulthandler\n_stacks = open({str(stacks)!r}, 'w')\nfaulthandler.dump_traceback_later(150, file=_stacks)"))
    client = NotebookClient(notebook, timeout=200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except Exception:
        print(stacks.read_text() if stacks.exists() else "no kernel stacks")
        raise
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "same grid as the crop: True" in outputs
    out = tmp_path / "quickstart_out"
    labels = read_volume(out / "output" / "t1_crop.mhd")
    assert labels.size == (96, 96, 96) and labels.array.any()
    assert sorted(p.name for p in (out / "publish").iterdir()) == sorted(
        ["t1_crop.raw", "t1_crop.out.raw", "t1_crop.mhd", "t1_crop.out.mhd", "config_render.json", "config.meta"])
    assert_same_geometry(read_volume(out / "publish" / "t1_crop.out.mhd"), labels)
