"""The *Triton Inference* widget: pick an image, an app and a server, run, cancel, export.

A magicgui :class:`~magicgui.widgets.Container` that only wires its fields to the Qt-free panel model
(:mod:`._panel_model`: state, validated overrides, jobs, result layers as data, export) and the
model's results to napari layers and notifications (:mod:`._widget_results`). Inference runs in a
napari worker thread (:func:`napari.qt.threading.create_worker`); the worker reports windows
done/total through a Qt signal (queued onto the GUI thread) to the widget's progress bar and a napari
``progress`` shown in the activity dock. Cancel sets the run's
:class:`~clara_napari.core.progress.CancelToken`, which the scanning-window engine checks between
batches; a cancelled run adds nothing. Errors become napari notifications. The embedded Triton
server is started on first use and kept for later runs.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any

import napari
from magicgui.widgets import Container
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QApplication

from ..core.apps import App, list_apps
from ..core.errors import ClaraNapariError
from ..core.session import choose_server
from ._labels import label_colormap
from ._panel import AUTO
from ._panel_model import (
    CONFIG_FILE,
    Overrides,
    PanelState,
    SourceLayer,
    Transport,
    app_defaults,
    error_message,
    make_job,
    server_line,
)
from ._qt_support import (
    WARM,
    Bridge,
    alive,
    reporter,
    start_warm_up,
    warm_up,
)
from ._runner import Job, Outcome, ServerInfo, connect, run_job
from ._servers import SERVERS
from ._settings import DEFAULTS, load_settings, save_settings
from ._widget_form import RUN_KEY, FormMixin
from ._widget_results import ResultsMixin
from ._writer import layer_volume

__all__ = ["CONFIG_FILE", "RUN_KEY", "WARM", "TritonInferenceWidget", "label_colormap"]

NO_REFERENCE = "none"


def _work(job: Job) -> Outcome:
    warm_up()
    return run_job(job)


class TritonInferenceWidget(FormMixin, ResultsMixin, Container):
    """Segment the chosen Image layer with a Clara app on a Triton server; the result is a Labels layer."""

    #: seconds to wait for a server (and its model) to become ready
    ready_timeout_s: float = 15.0

    def __init__(self, viewer: napari.viewer.Viewer, *, settings: dict[str, str] | None = None) -> None:
        super().__init__(labels=True)
        # napari hands docked widgets a PublicOnlyProxy of the viewer, whose layers come back as new
        # proxy objects on each access; the widget keeps layers as keys (which result belongs to which
        # image), so it works with the viewer itself
        self.viewer = getattr(viewer, "__wrapped__", viewer)
        viewer = self.viewer
        self._settings = load_settings() if settings is None else {**DEFAULTS, **settings}
        self._worker = None
        self._job: Job | None = None
        self._pbar = None
        self._started = 0.0
        self._results: dict[int, Labels] = {}           # id(image layer) → its latest Labels layer
        self._scores: dict[int, Image] = {}             # id(image layer) → its latest probability layer
        self.measurements: list = []                    # the table's rows (_panel.Measurement)
        self._last: tuple[Image, Labels, App, str] | None = None
        self._server_info: ServerInfo | None = None
        # what the close hook and the worker's reports share (they must not hold self)
        self._life: dict[str, Any] = {"closed": False, "job": None}
        self._bridge = Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.staged.connect(self._on_stage)
        self.last_outcome: Outcome | None = None

        apps = [a.name for a in list_apps()]
        saved = PanelState.from_settings(self._settings, apps)
        self._build_form(apps, saved)

        self._app.changed.connect(self._on_app_changed)
        self._app_file.changed.connect(self._on_app_changed)
        self._server.changed.connect(self._on_server_changed)
        self._protocol.changed.connect(self._on_server_changed)
        self._export_dir.changed.connect(self._save_settings)
        self._refresh.changed.connect(self.refresh_models)
        self._run.changed.connect(self._on_run)
        self._export.changed.connect(self.export)
        self._rerun.changed.connect(self._save_settings)
        self._probabilities.changed.connect(self._save_settings)
        self._reference.changed.connect(self.update_measurements)
        self._measure.changed.connect(self.update_measurements)
        self._copy.changed.connect(self.copy_table)
        # the keyboard shortcut: run on the selected image layer (weakly held: the viewer must not keep
        # a closed panel, and its embedded server, alive)
        run_selected = weakref.WeakMethod(self.run_on_selected)

        def on_key(_viewer) -> None:
            method = run_selected()
            if method is not None:
                method()

        viewer.bind_key(RUN_KEY, on_key, overwrite=True)

        # keep the image picker in sync with the viewer, docked or not
        for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved,
                        viewer.layers.events.reordered):
            emitter.connect(self._layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._reset_images)
        owner = id(self)
        SERVERS.acquire(owner)
        life = self._life

        def on_destroyed(*_args) -> None:      # the viewer closed: stop the run, then the server
            life["closed"] = True
            job = life.get("job")
            if job is not None:
                job.cancel.cancel()
            SERVERS.release(owner)

        self.native.destroyed.connect(on_destroyed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(SERVERS.stop_all)
        self._on_app_changed()
        self._ready = True          # from here on, changes are the user's: save them
        start_warm_up()

    # -- choices and settings -----------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb]

    @alive
    def _layers_changed(self, event=None) -> None:
        value = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and value is not None:
            value.events.name.connect(self._reset_images)
        if getattr(event, "type", "") == "removed" and value is not None:
            self._results.pop(id(value), None)
            self._scores.pop(id(value), None)
            value.events.name.disconnect(self._reset_images)
        self._reset_images()

    def _reset_images(self, event=None) -> None:
        try:
            self._image.reset_choices()
            self._reference.reset_choices()
        except RuntimeError:  # the Qt widget is gone (viewer closing)
            pass

    def _reference_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(NO_REFERENCE, None)] + [(layer.name, layer) for layer in self.viewer.layers
                                         if isinstance(layer, Labels) and layer.ndim == 3]

    # -- the fields as the panel model's state ------------------------------------------------
    def state(self) -> PanelState:
        """The panel's fields as a :class:`~._panel_model.PanelState`."""
        return PanelState(
            app=self._app.value, app_file=str(self._app_file.value or ""), server=self._server.value,
            protocol=self._protocol.value, export_dir=str(self._export_dir.value or ""), rerun=self._rerun.value,
            probabilities=bool(self._probabilities.value),
            overrides=Overrides(model=self._model.value or "", roi_size=tuple(s.value for s in self._roi),
                                overlap=self._overlap.value, blending=self._blending.value,
                                requests_in_flight=self._in_flight.value),
            transport=Transport(self._headers.value, str(self._ssl_ca.value), str(self._ssl_cert.value),
                                str(self._ssl_key.value)))

    def _save_settings(self, *_args) -> None:
        if not getattr(self, "_ready", False):
            return
        self._settings.update(self.state().settings())
        save_settings(self._settings)

    def current_app(self) -> App:
        return self.state().resolve_app()

    @alive
    def _on_app_changed(self, *_args) -> None:
        self._app_file.visible = self._app.value == CONFIG_FILE
        self._save_settings()
        try:
            defaults = app_defaults(self.current_app())
        except (ClaraNapariError, OSError, ValueError) as exc:
            self._status.value = f"app: {error_message(exc)}"
            return
        for spin, value in zip(self._roi, defaults.roi_size, strict=False):
            spin.value = int(value)
            spin.enabled = defaults.scanning
        if defaults.scanning:
            self._overlap.value = defaults.overlap
            self._blending.value = defaults.blending
        self._overlap.enabled = self._blending.enabled = defaults.scanning
        self._in_flight.value = defaults.requests_in_flight
        self._set_model_choices(default=defaults.model)
        self._status.value = defaults.summary

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        return list(self._model_list)

    def _set_model_choices(self, default: str | None = None) -> None:
        models = dict(self._server_info.models) if self._server_info else {}
        default = default or self._model.value
        names = sorted(set(models) | ({default} if default else set()))
        self._model_list = [(f"{name} ({models[name]})" if name in models else name, name) for name in names]
        self._model.reset_choices()
        if default in names:
            self._model.value = default

    @alive
    def _on_server_changed(self, *_args) -> None:
        self._server_info = None
        self._save_settings()
        try:
            inferer = self.current_app().config.inferer
        except (ClaraNapariError, OSError, ValueError):   # the app field reports it: the server is described without
            inferer = None
        try:
            choice = choose_server(self._server.value, inferer=inferer, protocol=self._protocol.value)
            self._status.value = f"server: {choice.describe()}"
        except ClaraNapariError as exc:
            self._status.value = f"server: {exc}"

    # -- server -------------------------------------------------------------------------------
    def refresh_models(self, *_args):
        """Read the model list from the server (in a worker; returns it)."""
        try:
            state = self.state()
            app = state.resolve_app()
            transport = state.transport.options()
        except (ClaraNapariError, OSError, ValueError) as exc:
            self._fail(exc)
            return None
        self._status.value = f"connecting ({state.server.strip() or AUTO})…"
        self._refresh.enabled = False
        worker = create_worker(connect, state.server, state.protocol, app.model_repository,
                               ready_timeout_s=self.ready_timeout_s, transport=transport, inferer=app.config.inferer,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_connected)
        worker.errored.connect(self._on_connect_failed)
        worker.finished.connect(self._on_refreshed)
        worker.start()
        return worker

    @alive
    def _on_refreshed(self) -> None:
        self._refresh.enabled = True

    @alive
    def _on_connect_failed(self, exc: Exception) -> None:
        self._fail(exc)

    @alive
    def _on_connected(self, info: ServerInfo) -> None:
        self._server_info = info
        self._set_model_choices()
        self._status.value = server_line(info, self._model.value)

    # -- run / cancel -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def transport(self) -> dict:
        """Headers and TLS files from the widget's fields (for every request to the server)."""
        return self.state().transport.options()

    def _on_run(self, *_args) -> None:
        if self._worker is not None:
            self.cancel()
            return
        self.run()

    @alive
    def run_on_selected(self):
        """The keyboard shortcut: run on the viewer's selected image layer (else the panel's image)."""
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb:
            self._image.value = layer
        if self._worker is not None:
            show_info("Triton Inference: a run is under way; Cancel it first.")
            return None
        return self.run()

    def run(self):
        """Start a run on the selected image (returns the worker, or None when nothing could start)."""
        layer = self._image.value
        if layer is None:
            show_warning("Triton Inference: open a 3D image first (File → Open Sample → clara-napari).")
            return None
        try:
            state = self.state()
            app = state.resolve_app()
            volume = layer_volume(layer.data, SourceLayer.of(layer).attributes, records=[layer.metadata])
            self._job = make_job(state, app, volume, ready_timeout_s=self.ready_timeout_s,
                                 progress=reporter(self._bridge.progressed, self._life),
                                 stage=reporter(self._bridge.staged, self._life), prepare=self._preparer(layer, app))
        except (ClaraNapariError, OSError, ValueError) as exc:
            self._fail(exc)
            return None
        self._life["job"] = self._job
        self._source, self._run_app = layer, app
        self._started = time.perf_counter()
        self._bar.max, self._bar.value = 1, 0
        self._pbar = napari_progress(total=0, desc=f"Triton Inference: {layer.name}")
        worker = create_worker(_work, self._job, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run.text = "Cancel"
        self._status.value = f"running {app.name} on {layer.name}…"
        worker.start()
        return worker

    def cancel(self) -> None:
        if self._job is not None and not self._job.cancel.cancelled:
            self._job.cancel.cancel()
            self._status.value = "cancelling (after the batch in flight)…"

    @alive
    def _on_progress(self, done: int, total: int) -> None:
        if self._job is None:
            return
        self._bar.max = max(total, 1)
        self._bar.value = min(done, total)
        if self._pbar is not None:
            if self._pbar.total != total:
                self._pbar.total = total
            self._pbar.update(done - self._pbar.n)
        self._status.value = f"inference: window {done}/{total}"

    @alive
    def _on_stage(self, name: str) -> None:
        # the status line only: every visible change repaints the window (the activity dock's
        # description is set once per run)
        if self._job is not None and not self._job.cancel.cancelled:
            self._status.value = f"{name}…"

    @alive
    def _on_returned(self, outcome: Outcome) -> None:
        self.last_outcome = outcome
        if outcome.server is not None:
            self._server_info = outcome.server if self._server_info is None or \
                self._server_info.address != outcome.server.address else self._server_info
        if outcome.cancelled:
            self._status.value = "cancelled: nothing added"
            show_info("Triton Inference: cancelled; nothing was added.")
        elif outcome.error is not None:
            self._fail(outcome.error)
        elif outcome.segmentation is not None:
            try:
                self._show_result(outcome.segmentation, outcome.prepared)
            except (ClaraNapariError, ValueError, IndexError, KeyError) as exc:   # a layer changed meanwhile
                self._fail(exc)

    def _on_finished(self) -> None:
        self._worker = None
        self._job = None
        self._life["job"] = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self._life["closed"]:
            with contextlib.suppress(RuntimeError):
                self._run.text = "Run"

    def _fail(self, exc: BaseException) -> None:
        message = error_message(exc)
        try:
            self._status.value = f"failed: {message}"
            self._status.tooltip = message        # the whole message, also when the panel is narrow
        except RuntimeError:
            pass
        show_error(f"Triton Inference: {message}")

