"""The result half of the *Triton Inference* widget: result layers, the measurements table, export.

A mixin of :class:`~._widget.TritonInferenceWidget` (it uses the widget's fields and state); what is
shown is computed by :mod:`._panel_model` (plain data) and only turned into napari layers here.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QApplication

from ..core.apps import App
from ..core.errors import ClaraNapariError
from ..core.pipeline import Segmentation
from ._geometry import KEY
from ._labels import label_colormap
from ._panel import REPLACE, result_name, table_columns, to_csv
from ._panel_export import export_folder, plan_export, write_export
from ._panel_model import (
    PreparedResult,
    SourceLayer,
    measure_layer,
    prepare_result,
    server_line,
)
from ._qt_support import alive


class ResultsMixin:
    """Result layers, measurements and export of the widget (see the module docstring)."""

    _life: dict[str, Any]
    _last: tuple[Image, Labels, App, str] | None

    def _preparer(self, source: Image, app: App):
        """A function for the worker thread: the result's layer data (and new layers, built there).

        Building the layers (labels, colormap, features, probabilities) and the measurements off the GUI
        thread keeps their cost out of the event loop; only inserting them happens on the GUI thread.
        A re-run makes a new layer named with the app and the time, or (re-run: replace) an undoable
        replacement of the previous result's voxels, so painted edits are never lost.
        """
        layer = SourceLayer.of(source)
        existing = self._results.get(id(source))
        replace = self._rerun.value == REPLACE and existing is not None and existing in self.viewer.layers
        name = result_name(source.name, app.name)
        reference = self._reference.value
        reference_data = reference.data if reference is not None and reference in self.viewer.layers else None
        reference_name = f"the reference layer '{reference.name}'" if reference is not None else ""

        def prepare(segmentation: Segmentation) -> PreparedResult:
            result = prepare_result(segmentation, layer, app, name=name,
                                    previous=np.asarray(existing.data) if replace else None,
                                    reference=reference_data, reference_name=reference_name)
            if result.replace is None:
                spec = result.labels
                result.layer = Labels(spec.data, opacity=0.5, colormap=label_colormap(spec.colormap), **spec.kwargs)
            if result.probabilities is not None:
                spec = result.probabilities
                result.scores_layer = Image(spec.data, colormap=spec.colormap, **spec.kwargs)
            return result

        return prepare

    def _show_result(self, segmentation: Segmentation, prepared: PreparedResult) -> None:
        source: Image = self._source
        app = self._run_app
        kwargs = prepared.labels.kwargs
        layer = self._results.get(id(source))
        if prepared.replace is not None and layer is not None and layer in self.viewer.layers:
            # an undoable replacement: only the voxels that change, through the layer's own history
            for key in ("scale", "translate", "rotate"):
                if not np.array_equal(np.asarray(getattr(layer, key)), np.asarray(kwargs[key])):
                    setattr(layer, key, kwargs[key])
            old = layer.metadata.get(KEY, {})
            layer.metadata = kwargs["metadata"]
            if old.get("labels") != kwargs["metadata"][KEY].get("labels"):
                layer.colormap = label_colormap(prepared.labels.colormap)
                layer.features = kwargs["features"]
            indices, values = prepared.replace
            if indices[0].size:
                layer.data_setitem(indices, values)
        else:
            layer = prepared.layer if prepared.layer is not None else \
                Labels(prepared.labels.data, opacity=0.5, colormap=label_colormap(prepared.labels.colormap), **kwargs)
            self.viewer.layers.append(layer)
            self._results[id(source)] = layer
        scores = prepared.scores_layer
        if scores is not None:
            shown = self._scores.get(id(source))
            if prepared.replace is not None and shown is not None and shown in self.viewer.layers:
                shown.data = scores.data          # re-run in place: the score layer follows its labels
                shown.contrast_limits = scores.contrast_limits
            else:
                self.viewer.layers.append(scores)
                self._scores[id(source)] = scores
        self._last = (source, layer, app, segmentation.model)
        self._show_measurements(prepared.measurements)
        seconds = time.perf_counter() - self._started
        info = self._server_info
        where = server_line(info, segmentation.model) if info else segmentation.backend
        self._status.value = (f"done in {seconds:.1f} s: {prepared.voxels} voxels labelled ({prepared.ml:.1f} ml) "
                              f"in '{layer.name}' · {where}")
        self._status.tooltip = self._status.value

    # -- measurements -------------------------------------------------------------------------
    def _show_measurements(self, rows) -> None:
        self.measurements = list(rows)
        self._table.value = table_columns(self.measurements)
        # the total in the section's title; the section is not opened for the user: opening it re-lays out
        # the dock, which cost ~400 ms of event loop on the first run (whole T1 sample, measured)
        total = sum(row.ml for row in self.measurements)
        self._measurements.setText(f"Measurements: {len(self.measurements)} label(s), {total:.1f} ml")

    def _measure_last(self):
        """The table for the last result layer as it is now (edits included), Dice vs the reference chosen."""
        if self._last is None or self._last[1] not in self.viewer.layers:
            return []
        source, layer, app, _ = self._last
        reference = self._reference.value
        shown = reference if reference is not None and reference in self.viewer.layers else None
        return measure_layer(layer, source.metadata, app.config.label_names(), shown)

    @alive
    def update_measurements(self, *_args) -> None:
        """Measure the last result again (after edits, or against another reference)."""
        try:
            self._show_measurements(self._measure_last())
        except (ClaraNapariError, ValueError) as exc:
            self._fail(exc)

    def copy_table(self, *_args) -> str:
        """Put the table on the clipboard as tab-separated text (pastes into a spreadsheet); returns it."""
        text = to_csv(self.measurements, delimiter="\t")
        clipboard = QApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(text)
        return text

    @property
    def result_layer(self) -> Labels | None:
        """The latest Labels layer of the image picked now (after a run), if any."""
        source = self._image.value
        layer = self._results.get(id(source)) if source is not None else None
        return layer if layer is not None and layer in self.viewer.layers else None

    # -- export -------------------------------------------------------------------------------
    def export(self, *_args, folder: str | Path | None = None):
        """Write ``<folder>/output/<name>.mhd`` and the publish bundle ``<folder>/publish/`` (in a worker)."""
        target = export_folder(folder if folder is not None else self._export_dir.value)
        if target is None:
            show_warning("Triton Inference: choose a folder to export to.")
            return None
        if self._last is None or self._last[1] not in self.viewer.layers or self._last[0] not in self.viewer.layers:
            show_warning("Triton Inference: run a segmentation first; there is nothing to export.")
            return None
        source, labels_layer, app, model = self._last
        try:   # a snapshot: the user may paint on the layer while the worker writes
            plan = plan_export(target, source, labels_layer, app, model, self._measure_last())
        except (ClaraNapariError, ValueError) as exc:
            self._fail(exc)
            return None
        life = self._life

        def done(paths: list[Path]) -> None:
            if life["closed"]:
                return
            self.last_export = paths
            self._status.value = f"exported {paths[0].name} and the publish bundle to {target}"
            show_info(f"Triton Inference: exported to {target}")

        def failed(exc: Exception) -> None:
            if not life["closed"]:
                self._fail(exc)

        self._status.value = f"exporting to {target}…"
        worker = create_worker(write_export, plan, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
        return worker
