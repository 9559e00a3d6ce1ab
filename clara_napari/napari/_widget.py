"""The *Triton Inference* widget: pick an image, an app and a server, run, cancel, export.

A magicgui :class:`~magicgui.widgets.Container`. Inference runs in a napari worker thread
(:func:`napari.qt.threading.create_worker`); the worker reports windows done/total through a Qt
signal (queued onto the GUI thread) to the widget's progress bar and a napari ``progress`` shown in
the activity dock. Cancel sets the run's :class:`~clara_napari.core.progress.CancelToken`, which the
scanning-window engine checks between batches; a cancelled run adds nothing. Errors become napari
notifications. The embedded Triton server is started on first use and kept for later runs.
"""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar,
                              PushButton, SpinBox, Table)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QApplication, QLineEdit, QStyledItemDelegate
from superqt import QCollapsible

from ..core.apps import App, list_apps, resolve_app
from ..core.components import ScanWindowInferer
from ..core.errors import ClaraNapariError
from ..core.pipeline import Segmentation
from ..core.volume import safe_stem, write_volume
from ._geometry import AXIS_LABELS, KEY, UNITS, find_source_record, geometry_record, volume_to_layer
from ._labels import label_colormap
from ._panel import (AUTO, LOCAL, NEW_LAYER, REPLACE, RERUN_CHOICES, SERVER_HELP, choose_server, measure,
                     replacement, result_name, table_columns, to_csv)
from ._runner import (Job, Outcome, ServerInfo, configured, connect, run_job,
                      transport_options)
from ._servers import SERVERS
from ._settings import DEFAULTS, load_settings, save_settings
from ._writer import layer_volume, smallest_label_dtype

CONFIG_FILE = "config file…"
PROTOCOLS = ("HTTP", "gRPC")
#: runs the panel on the selected image layer
RUN_KEY = "Control-Shift-I"
NO_REFERENCE = "none"


def layer_attributes(layer) -> dict[str, Any]:
    """The parts of a layer's state that carry its geometry (what npe2 hands a writer)."""
    return {"scale": np.asarray(layer.scale), "translate": np.asarray(layer.translate),
            "rotate": np.asarray(layer.rotate), "shear": np.asarray(layer.shear),
            "affine": layer.affine.affine_matrix, "metadata": layer.metadata, "name": layer.name}


def _message(exc: BaseException) -> str:
    if isinstance(exc, ClaraNapariError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _model_window(app: App) -> list[int] | None:
    """The window size fixed by the app's model (its ``config.pbtxt``), if the model fixes one."""
    from ..core.backends.base import fixed_window, pick_tensor
    from ..core.model_repository import read_model_config

    config = app.config
    try:
        path = Path(config.model_loader.model_spec_file_name) if config.model_loader is not None \
            else app.model_repository / config.model_name
        spec = read_model_config(path)
        return fixed_window(spec, pick_tensor(spec.inputs, config.inferer.input_name, "input", str(path)))
    except Exception:  # unknown here: the server's model decides
        return None


def _warm_up() -> None:
    """First-use costs of a Labels layer, paid in the worker instead of the GUI thread.

    The first Labels layer of a session imports pandas (its features table) and has vispy build
    its line dash patterns (cached per process) for the layer's polygon overlay; the first run
    imports the Triton clients (grpc, gevent, protobuf). Done in a thread when the widget opens, so
    neither the import work nor the full garbage collections it triggers land on a run's event loop.
    """
    try:
        import google.protobuf.json_format  # noqa: F401
        import google.protobuf.text_format  # noqa: F401
        import pandas  # noqa: F401
        import tritonclient.grpc  # noqa: F401
        import tritonclient.grpc.model_config_pb2  # noqa: F401
        import tritonclient.http  # noqa: F401
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # only an optimisation
        pass


_WARM = threading.Lock()
_warmed = False
#: set when the background warm-up (started by the first widget) is done
WARM = threading.Event()


def _start_warm_up() -> None:
    """Pay the first-use costs in a background thread as soon as the widget opens (once per process)."""
    global _warmed
    with _WARM:
        if _warmed:
            return
        _warmed = True
    def warm() -> None:
        _warm_up()
        WARM.set()

    threading.Thread(target=warm, name="clara-napari-warm-up", daemon=True).start()


def _work(job: Job) -> Outcome:
    _warm_up()
    return run_job(job)


def _alive(method):
    """A slot that does nothing once the widget's Qt side is gone (queued signals can still arrive then)."""
    import functools

    @functools.wraps(method)
    def slot(self, *args, **kwargs):
        if self._life["closed"]:
            return None
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:    # "wrapped C/C++ object ... has been deleted": closing under way
            if "deleted" not in str(exc):
                raise
            return None

    return slot


def _reporter(signal, life: dict):
    """A worker-thread callback that emits ``signal`` while the widget lives."""
    def emit(*args) -> None:
        if not life["closed"]:
            try:
                signal.emit(*args)
            except RuntimeError:   # the bridge went with the widget
                pass
    return emit


class _Bridge(QObject):
    """Carries worker-thread reports onto the GUI thread (queued connections)."""

    progressed = Signal(int, int)
    staged = Signal(str)


class TritonInferenceWidget(Container):
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
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.staged.connect(self._on_stage)
        self.last_outcome: Outcome | None = None

        apps = [a.name for a in list_apps()]
        saved_app = self._settings.get("app") or ""
        self._image = ComboBox(label="image", choices=self._image_choices, nullable=False)
        self._app = ComboBox(label="app", choices=apps + [CONFIG_FILE],
                             value=saved_app if saved_app in apps + [CONFIG_FILE] else (apps[0] if apps else CONFIG_FILE))
        self._app_file = FileEdit(label="config file", mode="r", filter="*.json",
                                  value=self._settings.get("app_file") or "")
        self._server = LineEdit(label="server", value=self._settings.get("server") or AUTO)
        self._server.tooltip = SERVER_HELP
        self._protocol = ComboBox(label="protocol", choices=list(PROTOCOLS),
                                  value=self._settings.get("protocol") if self._settings.get("protocol") in PROTOCOLS else "HTTP")
        self._headers = LineEdit(label="headers", value="")
        self._headers.native.setEchoMode(QLineEdit.EchoMode.Password)    # tokens are not shown
        self._headers.tooltip = "extra request headers, e.g. 'Authorization=Bearer TOKEN; x-key=value' (not saved)"
        self._ssl_ca = FileEdit(label="TLS CA file", mode="r", value="")
        self._ssl_ca.tooltip = "CA certificate for https:// and grpcs:// servers (optional)"
        self._ssl_cert = FileEdit(label="client cert", mode="r", value="")
        self._ssl_key = FileEdit(label="client key", mode="r", value="")
        self._model_list: list[tuple[str, str]] = []
        self._model = ComboBox(choices=self._model_choices)
        self._refresh = PushButton(text="↻ models")
        self._refresh.tooltip = "read the model list from the server (starts the embedded server if needed)"
        model_row = Container(layout="horizontal", widgets=[self._model, self._refresh], labels=False, label="model")
        model_row.margins = (0, 0, 0, 0)
        self._roi = [SpinBox(min=0, max=2048, step=16, value=0) for _ in range(3)]
        for spin, axis in zip(self._roi, "xyz"):
            spin.tooltip = f"window size along {axis} in voxels of the model's input (0 = the model's own)"
        roi_row = Container(layout="horizontal", widgets=self._roi, labels=False, label="window x, y, z")
        roi_row.margins = (0, 0, 0, 0)
        self._overlap = FloatSpinBox(label="overlap", min=0.0, max=0.95, step=0.05, value=0.25)
        self._blending = ComboBox(label="blending", choices=["constant", "gaussian"], value="constant")
        self._in_flight = SpinBox(label="requests in flight", min=1, max=64, value=2)
        self._rerun = ComboBox(label="re-run", choices=list(RERUN_CHOICES),
                               value=self._settings.get("rerun") if self._settings.get("rerun") in RERUN_CHOICES else NEW_LAYER)
        self._rerun.tooltip = ("what running again on an image with a result does: a new layer (the old one and its edits "
                               "stay) or a replacement that Ctrl+Z undoes")
        self._probabilities = CheckBox(label="probabilities", text="add a foreground-score layer",
                                       value=self._settings.get("probabilities") == "yes")
        self._probabilities.tooltip = "the stitched model output before argmax, on the image's grid (float32: 4 bytes a voxel)"
        self._run = PushButton(text="Run")
        self._run.tooltip = f"run the app on the image ({RUN_KEY.replace('Control', 'Ctrl')} runs it on the selected image layer)"
        self._bar = ProgressBar(label="windows", min=0, max=1, value=0)
        self._status = Label(label="status", value="server not started")
        self._status.native.setWordWrap(True)
        self._export_dir = FileEdit(label="export to", mode="d", value=self._settings.get("export_dir") or "")
        self._export = PushButton(text="Export MHD + publish bundle")
        self._export.tooltip = "the labels as MHD, the publish bundle and the measurements as CSV"
        self._reference = ComboBox(label="Dice vs", choices=self._reference_choices, nullable=False)
        self._reference.tooltip = "a reference (ground truth) labels layer on the image's grid"
        self._table = Table(value={name: [] for name in ("label", "name", "voxels", "ml", "dice")})
        self._table.read_only = True
        # the cells as written (magicgui's default delegate shows 1937455 voxels as 1.937e+06)
        self._table.native.setItemDelegate(QStyledItemDelegate(self._table.native))
        self._table.native.verticalHeader().setVisible(False)
        self._table.native.setMaximumHeight(120)
        self._copy = PushButton(text="Copy table")
        self._measure = PushButton(text="↻ measure")
        self._measure.tooltip = "measure the result layer again (after edits)"
        buttons = Container(layout="horizontal", widgets=[self._measure, self._copy], labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.extend([self._image, self._app, self._app_file, self._server, self._run, self._bar, self._status,
                     self._export_dir, self._export])
        # the rest in collapsible sections (superqt), below the essentials
        advanced = Container(labels=True, widgets=[self._protocol, self._headers, self._ssl_ca, self._ssl_cert,
                                                   self._ssl_key, model_row, roi_row, self._overlap, self._blending,
                                                   self._in_flight, self._rerun, self._probabilities])
        table = Container(labels=True, widgets=[self._reference, self._table, buttons])
        self._advanced = QCollapsible("Advanced")
        self._advanced.addWidget(advanced.native)
        self._measurements = QCollapsible("Measurements")
        self._measurements.addWidget(table.native)
        self._sections = (advanced, table)        # keep the magicgui containers alive
        layout = self.native.layout()
        layout.insertWidget(layout.indexOf(self._export_dir.native.parentWidget()), self._measurements)
        layout.insertWidget(layout.indexOf(self._export_dir.native.parentWidget()), self._advanced)

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
        _start_warm_up()

    # -- choices and settings -----------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb]

    @_alive
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

    def _save_settings(self, *_args) -> None:
        if not getattr(self, "_ready", False):
            return
        values = {"server": self._server.value.strip() or AUTO, "protocol": self._protocol.value,
                  "app": self._app.value, "app_file": str(self._app_file.value or ""),
                  "export_dir": str(self._export_dir.value or ""), "rerun": self._rerun.value,
                  "probabilities": "yes" if self._probabilities.value else "no"}
        if values["app_file"] in (".", ""):
            values["app_file"] = ""
        if values["export_dir"] in (".", ""):
            values["export_dir"] = ""
        self._settings.update(values)
        save_settings(self._settings)

    def current_app(self) -> App:
        if self._app.value == CONFIG_FILE:
            path = str(self._app_file.value or "")
            if path in ("", "."):
                raise ClaraNapariError("choose a config_inference.json file (app: config file…).")
            return resolve_app(path)
        return resolve_app(self._app.value)

    @_alive
    def _on_app_changed(self, *_args) -> None:
        self._app_file.visible = self._app.value == CONFIG_FILE
        self._save_settings()
        try:
            app = self.current_app()
            config = app.config
        except Exception as exc:
            self._status.value = f"app: {_message(exc)}"
            return
        inferer = config.inferer
        scanning = isinstance(inferer, ScanWindowInferer) and config.scanning
        roi = (inferer.roi_size or _model_window(app)) if scanning else None
        for spin, value in zip(self._roi, roi or [0, 0, 0]):
            spin.value = int(value)
            spin.enabled = scanning
        if scanning:
            self._overlap.value = float(inferer.overlap)
            self._blending.value = inferer.blending
        self._overlap.enabled = self._blending.enabled = scanning
        self._in_flight.value = int(inferer.requests_in_flight)
        self._set_model_choices(default=config.model_name)
        labels = ", ".join(config.label_names().values()) or "no labels listed"
        self._status.value = f"app {app.name}: model {config.model_name}, labels: {labels}"

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

    @_alive
    def _on_server_changed(self, *_args) -> None:
        self._server_info = None
        self._save_settings()
        try:
            inferer = self.current_app().config.inferer
        except Exception:
            inferer = None
        try:
            self._status.value = f"server: {choose_server(self._server.value, self._protocol.value, inferer).describe()}"
        except ClaraNapariError as exc:
            self._status.value = f"server: {exc}"

    # -- server -------------------------------------------------------------------------------
    def refresh_models(self, *_args):
        """Read the model list from the server (in a worker; returns it)."""
        try:
            app = self.current_app()
        except Exception as exc:
            self._fail(exc)
            return None
        self._status.value = f"connecting ({self._server.value.strip() or AUTO})…"
        self._refresh.enabled = False
        server, protocol, timeout = self._server.value, self._protocol.value, self.ready_timeout_s  # read here, not in the worker
        inferer = app.config.inferer
        try:
            transport = self.transport()
        except Exception as exc:
            self._refresh.enabled = True
            self._fail(exc)
            return None

        def work():
            try:
                return connect(server, protocol, app.model_repository, ready_timeout_s=timeout,
                               transport=transport, inferer=inferer), None
            except Exception as exc:
                return None, exc

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(self._on_connected)
        worker.finished.connect(self._on_refreshed)
        worker.start()
        return worker

    @_alive
    def _on_refreshed(self) -> None:
        self._refresh.enabled = True

    @_alive
    def _on_connected(self, result) -> None:
        info, error = result
        if error is not None:
            self._fail(error)
            return
        self._server_info = info
        self._set_model_choices()
        self._status.value = self._server_line(info, self._model.value)

    def _server_line(self, info: ServerInfo, model: str | None) -> str:
        state = info.models.get(model or "", "not on the server") if info.models else ""
        where = "this machine (CPU, onnxruntime)" if info.description.startswith("embedded") else info.where
        if info.address == LOCAL:
            return f"{info.description} · model {model} · runs on {where}"
        return f"{info.description} ready at {info.address} · model {model} {state} · runs on {where}".replace("  ", " ")

    # -- run / cancel -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def transport(self) -> dict:
        """Headers and TLS files from the widget's fields (for every request to the server)."""
        return transport_options(self._headers.value, str(self._ssl_ca.value), str(self._ssl_cert.value),
                                 str(self._ssl_key.value))

    def _on_run(self, *_args) -> None:
        if self._worker is not None:
            self.cancel()
            return
        self.run()

    @_alive
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
            app = self.current_app()
            volume = layer_volume(layer.data, layer_attributes(layer), records=[layer.metadata])
            config = configured(app.config, model=self._model.value, roi_size=[s.value for s in self._roi],
                                overlap=self._overlap.value, blending=self._blending.value,
                                requests_in_flight=self._in_flight.value)
            transport = self.transport()
        except Exception as exc:
            self._fail(exc)
            return None
        self._job = Job(volume=volume, app=app, config=config, server=self._server.value, protocol=self._protocol.value,
                        ready_timeout_s=self.ready_timeout_s, transport=transport, progress=_reporter(self._bridge.progressed, self._life),
                        stage=_reporter(self._bridge.staged, self._life), prepare=self._preparer(layer, app),
                        probabilities=bool(self._probabilities.value))
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

    @_alive
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

    @_alive
    def _on_stage(self, name: str) -> None:
        # the status line only: every visible change repaints the window (the activity dock's
        # description is set once per run)
        if self._job is not None and not self._job.cancel.cancelled:
            self._status.value = f"{name}…"

    @_alive
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
            except Exception as exc:
                self._fail(exc)

    def _on_finished(self) -> None:
        self._worker = None
        self._job = None
        self._life["job"] = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self._life["closed"]:
            try:
                self._run.text = "Run"
            except RuntimeError:
                pass

    def _fail(self, exc: BaseException) -> None:
        message = _message(exc)
        try:
            self._status.value = f"failed: {message}"
            self._status.tooltip = message        # the whole message, also when the panel is narrow
        except RuntimeError:
            pass
        show_error(f"Triton Inference: {message}")

    # -- result -------------------------------------------------------------------------------
    def _preparer(self, source: Image, app: App):
        """A function for the worker thread: the result's layer data (and new layers, built there).

        Building the layers (labels, colormap, features, probabilities) and the measurements off the GUI
        thread keeps their cost out of the event loop; only inserting them happens on the GUI thread.
        A re-run makes a new layer named with the app and the time, or (re-run: replace) an undoable
        replacement of the previous result's voxels, so painted edits are never lost.
        """
        attributes = layer_attributes(source)
        shape = np.shape(source.data)
        table = app.config.label_table()
        names = table.names()
        source_name = source.name
        transform = {"scale": np.array(source.scale), "translate": np.array(source.translate),
                     "rotate": np.array(source.rotate), "affine": source.affine.affine_matrix.copy()}
        existing = self._results.get(id(source))
        replace = self._rerun.value == REPLACE and existing is not None and existing in self.viewer.layers
        base_name = result_name(source_name, app.name)
        reference = self._reference.value
        reference_data = reference.data if reference is not None and reference in self.viewer.layers else None
        reference_name = f"the reference layer '{reference.name}'" if reference is not None else ""

        def layer_kwargs(volume, name: str, kind: str, extra: dict) -> tuple[Any, dict[str, Any]]:
            record = find_source_record(shape, attributes, [attributes["metadata"]])
            if record is not None:
                return volume_to_layer(volume, name=name, kind=kind, **extra)
            # a layer made in code: same grid, same transform as the source layer
            return volume.array, {"name": name, "units": UNITS, "axis_labels": AXIS_LABELS, **transform,
                                  "metadata": {KEY: geometry_record(volume, (0, 1, 2), kind=kind, **extra)}}

        def prepare(segmentation: Segmentation) -> dict[str, Any]:
            labels_volume = segmentation.labels
            extra = {"app": str(app.config_path), "model": segmentation.model, "source_layer": source_name,
                     "labels": table.record()}
            data, kwargs = layer_kwargs(labels_volume, base_name, "labels", extra)
            features = table.features()
            kwargs["features"] = {"index": np.array(features["index"]), "name": features["name"]}
            kwargs["colormap"] = label_colormap(table)
            prepared = {"data": data, "kwargs": kwargs, "layer": None, "replace": None, "probabilities": None,
                        "voxels": int(np.count_nonzero(labels_volume.array)),
                        "ml": labels_volume.physical_volume_ml()}
            try:
                prepared["measurements"] = measure(data, labels_volume.spacing, names, reference_data, reference_name)
            except ClaraNapariError:      # a reference on another grid: measured without Dice
                prepared["measurements"] = measure(data, labels_volume.spacing, names)
            if replace:
                prepared["replace"] = replacement(np.asarray(existing.data), np.asarray(data))
            else:
                prepared["layer"] = Labels(data, opacity=0.5, **kwargs)
            if segmentation.probabilities is not None:
                score, score_kwargs = layer_kwargs(segmentation.probabilities, f"{base_name} probabilities", "image",
                                                   {"model": segmentation.model, "source_layer": source_name})
                finite = score[np.isfinite(score)]
                limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
                if limits[0] == limits[1]:
                    limits = (limits[0], limits[0] + 1.0)
                prepared["probabilities"] = Image(score, colormap="magma", blending="additive", opacity=0.6,
                                                  contrast_limits=limits, visible=True, **score_kwargs)
            return prepared

        return prepare

    def _show_result(self, segmentation: Segmentation, prepared: dict[str, Any]) -> None:
        source: Image = self._source
        app = self._run_app
        kwargs = prepared["kwargs"]
        layer = self._results.get(id(source))
        if prepared["replace"] is not None and layer is not None and layer in self.viewer.layers:
            # an undoable replacement: only the voxels that change, through the layer's own history
            for key in ("scale", "translate", "rotate"):
                if not np.array_equal(np.asarray(getattr(layer, key)), np.asarray(kwargs[key])):
                    setattr(layer, key, kwargs[key])
            old = layer.metadata.get(KEY, {})
            layer.metadata = kwargs["metadata"]
            if old.get("labels") != kwargs["metadata"][KEY].get("labels"):
                layer.colormap = kwargs["colormap"]
                layer.features = kwargs["features"]
            indices, values = prepared["replace"]
            if indices[0].size:
                layer.data_setitem(indices, values)
        else:
            layer = prepared["layer"] if prepared["layer"] is not None else \
                Labels(prepared["data"], opacity=0.5, **kwargs)
            self.viewer.layers.append(layer)
            self._results[id(source)] = layer
        scores = prepared["probabilities"]
        if scores is not None:
            shown = self._scores.get(id(source))
            if prepared["replace"] is not None and shown is not None and shown in self.viewer.layers:
                shown.data = scores.data          # re-run in place: the score layer follows its labels
                shown.contrast_limits = scores.contrast_limits
            else:
                self.viewer.layers.append(scores)
                self._scores[id(source)] = scores
        self._last = (source, layer, app, segmentation.model)
        self._show_measurements(prepared["measurements"])
        seconds = time.perf_counter() - self._started
        info = self._server_info
        where = self._server_line(info, segmentation.model) if info else segmentation.backend
        self._status.value = (f"done in {seconds:.1f} s: {prepared['voxels']} voxels labelled ({prepared['ml']:.1f} ml) "
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
        volume = layer_volume(layer.data, layer_attributes(layer), records=[source.metadata])
        reference = self._reference.value
        reference_data = np.asarray(reference.data) if reference is not None and reference in self.viewer.layers else None
        return measure(volume.array, volume.spacing, app.config.label_names(), reference_data,
                       f"the reference layer '{getattr(reference, 'name', '')}'")

    @_alive
    def update_measurements(self, *_args) -> None:
        """Measure the last result again (after edits, or against another reference)."""
        try:
            self._show_measurements(self._measure_last())
        except Exception as exc:
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
        from ..core.components import VolumeWriter
        from ..core.dicom.series import is_dicom_series
        from ..core.dicom.writer import write_app_seg
        from ..core.publish import write_publish_bundle

        target = Path(folder) if folder is not None else Path(str(self._export_dir.value or ""))
        if str(target) in ("", "."):
            show_warning("Triton Inference: choose a folder to export to.")
            return None
        if self._last is None or self._last[1] not in self.viewer.layers or self._last[0] not in self.viewer.layers:
            show_warning("Triton Inference: run a segmentation first; there is nothing to export.")
            return None
        source, labels_layer, app, model = self._last
        try:
            image = layer_volume(source.data, layer_attributes(source), records=[source.metadata])
            labels = layer_volume(labels_layer.data, layer_attributes(labels_layer), records=[source.metadata])
            # a snapshot: the user may paint on the layer while the worker writes
            labels = labels.with_array(labels.array.astype(smallest_label_dtype(labels.array), copy=True), path=None)
            if not labels.same_grid(image):
                raise ClaraNapariError(f"the Labels layer '{labels_layer.name}' is no longer on the grid of '{source.name}'.")
            rows = self._measure_last()          # what is exported: the layer as it is now
        except Exception as exc:
            self._fail(exc)
            return None
        stem = safe_stem(image.name if image.path is not None else source.name)

        def work():
            from ..core.atomic import Transaction

            try:  # the output, the bundle, the measurements (and a DICOM SEG) land together or not at all
                header = target / "output" / f"{stem}.mhd"
                table = target / "output" / f"{stem}.measurements.csv"
                with Transaction(overwrite=True, forbid=[image.path]) as txn:
                    write_volume(labels, txn.path(header), forbid=[image.path] if image.path else [])
                    segmentation = Segmentation(source=image, outputs=[(VolumeWriter(), labels)], model=model)
                    bundle = write_publish_bundle(target / "publish", segmentation, app, overwrite=True, name=stem,
                                                  transaction=txn)
                    if is_dicom_series(image.path):   # a DICOM series source: its DICOM SEG as well
                        seg = target / "output" / f"{stem}.seg.dcm"
                        write_app_seg(labels.with_array(labels.array, path=image.path), app, txn.path(seg),
                                      model=model)
                        bundle.append(seg)
                    txn.path(table).write_text(to_csv(rows), encoding="utf-8")
                    txn.commit()
                return [header, *bundle, table], None
            except Exception as exc:
                return None, exc

        def done(result):
            if self._life["closed"]:
                return
            paths, error = result
            if error is not None:
                self._fail(error)
                return
            self.last_export = paths
            self._status.value = f"exported {paths[0].name} and the publish bundle to {target}"
            show_info(f"Triton Inference: exported to {target}")

        self._status.value = f"exporting to {target}…"
        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(done)
        worker.start()
        return worker
