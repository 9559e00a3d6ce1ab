"""The *Triton Inference* panel without Qt or napari: its state, validated overrides, jobs and result layers.

The Qt widget (:mod:`._widget`) reads its fields into a :class:`PanelState`, asks this module for a
:class:`~._runner.Job` (:func:`make_job`), hands a finished segmentation to :func:`prepare_result`
(plain layer data: array, name, colours, metadata) and a result to :mod:`._panel_export`; it only
turns these into napari layers and notifications. Layers are read through their plain attributes
(``data``, ``scale``, ``metadata``...), never through napari types.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.apps import App, resolve_app
from ..core.components import ScanWindowInferer
from ..core.config import InferenceConfig
from ..core.errors import ClaraNapariError, ConfigError
from ..core.pipeline import Segmentation
from ..core.registry import revalidated
from ..core.volume import Volume
from ._geometry import (
    AXIS_LABELS,
    KEY,
    UNITS,
    find_source_record,
    geometry_record,
    volume_to_layer,
)
from ._panel import (
    AUTO,
    LOCAL,
    NEW_LAYER,
    REPLACE,
    RERUN_CHOICES,
    Measurement,
    measure,
    replacement,
    result_name,
)
from ._runner import Job, ServerInfo, transport_options
from ._writer import layer_volume

#: the app field's last entry: a config_inference.json chosen as a file
CONFIG_FILE = "config file…"
PROTOCOLS = ("HTTP", "gRPC")


def error_message(exc: BaseException) -> str:
    """One line for the status and the notification: the project's own errors as written, others typed."""
    if isinstance(exc, ClaraNapariError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def path_text(value: Any) -> str:
    """A file field's value as text; an empty field (magicgui shows it as ``.``) is ``""``."""
    text = str(value or "").strip()
    return "" if text in ("", ".") else text


# -- state ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overrides:
    """The panel's changes to the app's inferer (``None``: the app's own); a ``roi_size`` of zeros
    means "the model's own window"."""

    model: str = ""
    roi_size: tuple[int, ...] | None = None
    overlap: float | None = None
    blending: str | None = None
    requests_in_flight: int | None = None


@dataclass(frozen=True)
class Transport:
    """Headers (``KEY=VALUE; KEY=VALUE``, never saved) and TLS files for every request to the server."""

    headers: str = ""
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""

    def options(self) -> dict[str, Any]:
        """TransportOptions keywords (raises the project's errors for a malformed header)."""
        return transport_options(self.headers, path_text(self.ssl_ca), path_text(self.ssl_cert),
                                 path_text(self.ssl_key))


@dataclass(frozen=True)
class PanelState:
    """Everything the panel's fields hold; what :func:`save_settings` keeps between sessions is
    :meth:`settings` (no headers, no TLS files, no overrides)."""

    app: str = ""
    app_file: str = ""
    server: str = AUTO
    protocol: str = "HTTP"
    export_dir: str = ""
    rerun: str = NEW_LAYER
    probabilities: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    transport: Transport = field(default_factory=Transport)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], apps: Sequence[str]) -> PanelState:
        """The state a new panel starts with: the saved values that are still valid choices."""
        choices = [*apps, CONFIG_FILE]
        saved_app = str(settings.get("app") or "")
        app = saved_app if saved_app in choices else (apps[0] if apps else CONFIG_FILE)
        protocol = settings.get("protocol")
        rerun = settings.get("rerun")
        return cls(app=app, app_file=path_text(settings.get("app_file")),
                   server=str(settings.get("server") or AUTO),
                   protocol=protocol if protocol in PROTOCOLS else "HTTP",
                   export_dir=path_text(settings.get("export_dir")),
                   rerun=rerun if rerun in RERUN_CHOICES else NEW_LAYER,
                   probabilities=settings.get("probabilities") == "yes")

    def settings(self) -> dict[str, str]:
        """The values kept in the settings file (strings, as :mod:`._settings` stores them)."""
        return {"server": self.server.strip() or AUTO, "protocol": self.protocol, "app": self.app,
                "app_file": path_text(self.app_file), "export_dir": path_text(self.export_dir),
                "rerun": self.rerun, "probabilities": "yes" if self.probabilities else "no"}

    def resolve_app(self) -> App:
        """The app the panel names (a bundled app, or the chosen config file)."""
        if self.app == CONFIG_FILE:
            path = path_text(self.app_file)
            if not path:
                raise ConfigError("choose a config_inference.json file (app: config file…).")
            return resolve_app(path)
        return resolve_app(self.app)

    @property
    def replaces(self) -> bool:
        return self.rerun == REPLACE


# -- the app's defaults and the overrides -----------------------------------------------------
@dataclass(frozen=True)
class AppDefaults:
    """What the panel's fields show when an app is chosen."""

    scanning: bool
    roi_size: tuple[int, ...]
    overlap: float | None
    blending: str | None
    requests_in_flight: int
    model: str
    summary: str


def model_window(app: App) -> list[int] | None:
    """The window size fixed by the app's model (its ``config.pbtxt``); ``None`` when the model fixes
    none or its description cannot be read here (the server's model decides then)."""
    from ..core.backends.base import fixed_window, pick_tensor
    from ..core.model_repository import read_model_config

    config = app.config
    path = Path(config.model_loader.model_spec_file_name) if config.model_loader is not None \
        else app.model_repository / config.model_name
    try:
        spec = read_model_config(path)
        return fixed_window(spec, pick_tensor(spec.inputs, config.inferer.input_name, "input", str(path)))
    except (ClaraNapariError, OSError, ValueError):
        return None


def app_defaults(app: App) -> AppDefaults:
    config = app.config
    inferer = config.inferer
    scanning = isinstance(inferer, ScanWindowInferer) and config.scanning
    roi = (inferer.roi_size or model_window(app)) if isinstance(inferer, ScanWindowInferer) and scanning else None
    labels = ", ".join(config.label_names().values()) or "no labels listed"
    return AppDefaults(scanning=scanning, roi_size=tuple(int(v) for v in (roi or (0, 0, 0))),
                       overlap=float(inferer.overlap) if isinstance(inferer, ScanWindowInferer) and scanning else None,
                       blending=inferer.blending if isinstance(inferer, ScanWindowInferer) and scanning else None,
                       requests_in_flight=int(inferer.requests_in_flight), model=config.model_name,
                       summary=f"app {app.name}: model {config.model_name}, labels: {labels}")


def configured(config: InferenceConfig, overrides: Overrides | None = None, **changes: Any) -> InferenceConfig:
    """A copy of ``config`` with the panel's choices, validated as the config's own inferer args are
    (a window of [7, 7], an overlap of 1.5 or blending 'linear' raise a ConfigError naming the field);
    the app's own config is left untouched.

    ``changes`` are :class:`Overrides` fields (``model=``, ``roi_size=``, ...) for callers without a
    panel. A model other than the app's drops the app's model loader (its ``config.pbtxt`` describes
    the app's model). The window and blending apply to scanning-window inferers only.
    """
    wanted = dataclasses.replace(overrides or Overrides(), **changes)
    inferer = config.inferer
    updates: dict[str, Any] = {}
    loader = config.model_loader
    if wanted.model and wanted.model != inferer.model_name:
        updates["model_name"] = wanted.model
        loader = None
    if isinstance(inferer, ScanWindowInferer):
        if wanted.roi_size is not None:      # all zeros: the model's own window
            roi = [int(v) for v in wanted.roi_size]
            updates["roi_size"] = roi if any(v != 0 for v in roi) else None
        if wanted.overlap is not None:
            updates["overlap"] = float(wanted.overlap)
        if wanted.blending is not None:
            updates["blending"] = wanted.blending
            if "mode" in type(inferer).model_fields:    # Clara 4's name for it (copied to blending)
                updates["mode"] = wanted.blending
    if wanted.requests_in_flight is not None:
        updates["requests_in_flight"] = int(wanted.requests_in_flight)
    checked = revalidated(inferer, updates, "inferer.args", file=f"the panel's settings for {config.file}")
    return dataclasses.replace(config, inferer=checked, model_loader=loader)


# -- a run ------------------------------------------------------------------------------------
def make_job(state: PanelState, app: App, volume: Volume, *, ready_timeout_s: float,
             progress: Callable[[int, int], None] | None = None, stage: Callable[[str], None] | None = None,
             prepare: Callable[[Segmentation], Any] | None = None) -> Job:
    """The run the panel's state asks for (raises the project's errors for a bad override or header)."""
    return Job(volume=volume, app=app, config=configured(app.config, state.overrides), server=state.server,
               protocol=state.protocol, ready_timeout_s=ready_timeout_s, transport=state.transport.options(),
               progress=progress, stage=stage, prepare=prepare, probabilities=state.probabilities)


def server_line(info: ServerInfo, model: str | None) -> str:
    """The status line for a server and the model chosen on it."""
    state = info.models.get(model or "", "not on the server") if info.models else ""
    where = "this machine (CPU, onnxruntime)" if info.description.startswith("embedded") else info.where
    if info.address == LOCAL:
        return f"{info.description} · model {model} · runs on {where}"
    return f"{info.description} ready at {info.address} · model {model} {state} · runs on {where}".replace("  ", " ")


# -- result layers ----------------------------------------------------------------------------
def layer_attributes(layer: Any) -> dict[str, Any]:
    """The parts of a layer's state that carry its geometry (what npe2 hands a writer)."""
    return {"scale": np.asarray(layer.scale), "translate": np.asarray(layer.translate),
            "rotate": np.asarray(layer.rotate), "shear": np.asarray(layer.shear),
            "affine": layer.affine.affine_matrix, "metadata": layer.metadata, "name": layer.name}


@dataclass(frozen=True)
class SourceLayer:
    """What a result needs from its image layer, read on the GUI thread when the run starts."""

    name: str
    shape: tuple[int, ...]
    attributes: dict[str, Any]

    @classmethod
    def of(cls, layer: Any) -> SourceLayer:
        return cls(layer.name, tuple(np.shape(layer.data)), layer_attributes(layer))


@dataclass
class LayerSpec:
    """A layer as plain data: ``data`` and the keywords of napari's layer class (``colormap`` apart:
    for labels the app's :class:`~clara_napari.core.label_table.LabelTable`, for an image a colormap name)."""

    data: Any
    kwargs: dict[str, Any]
    colormap: Any = None


@dataclass
class PreparedResult:
    """A finished run as the panel shows it; ``layer`` and ``scores_layer`` are set by the Qt side
    (it builds the napari layers in the worker thread too)."""

    labels: LayerSpec
    measurements: list[Measurement]
    voxels: int
    ml: float
    probabilities: LayerSpec | None = None
    #: (indices, values) that turn the previous result into this one (re-run: replace)
    replace: tuple[tuple[np.ndarray, ...], np.ndarray] | None = None
    layer: Any = None
    scores_layer: Any = None


def _layer_data(source: SourceLayer, volume: Volume, name: str, kind: str, extra: dict[str, Any]):
    if find_source_record(source.shape, source.attributes, [source.attributes["metadata"]]) is not None:
        return volume_to_layer(volume, name=name, kind=kind, **extra)
    # a layer made in code: same grid, same transform as the source layer
    transform = {key: np.array(source.attributes[key]) for key in ("scale", "translate", "rotate")}
    transform["affine"] = np.array(source.attributes["affine"])
    return volume.array, {"name": name, "units": UNITS, "axis_labels": AXIS_LABELS, **transform,
                          "metadata": {KEY: geometry_record(volume, (0, 1, 2), kind=kind, **extra)}}


def prepare_result(segmentation: Segmentation, source: SourceLayer, app: App, *, name: str | None = None,
                   previous: np.ndarray | None = None, reference: np.ndarray | None = None,
                   reference_name: str = "") -> PreparedResult:
    """The labels (and probabilities) layers of a run as plain data, with their measurements (Dice
    against ``reference`` when it is on the result's grid); with ``previous`` (the last result's data,
    re-run: replace), the voxels that change instead of a new layer. Runs in the worker thread."""
    table = app.config.label_table()
    names = table.names()
    base_name = name or result_name(source.name, app.name)
    labels_volume = segmentation.labels
    extra = {"app": str(app.config_path), "model": segmentation.model, "source_layer": source.name,
             "labels": table.record()}
    data, kwargs = _layer_data(source, labels_volume, base_name, "labels", extra)
    features = table.features()
    kwargs["features"] = {"index": np.array(features["index"]), "name": features["name"]}
    try:
        rows = measure(data, labels_volume.spacing, names, reference, reference_name)
    except ClaraNapariError:      # a reference on another grid: measured without Dice
        rows = measure(data, labels_volume.spacing, names)
    result = PreparedResult(labels=LayerSpec(data, kwargs, table), measurements=rows,
                            voxels=int(np.count_nonzero(labels_volume.array)), ml=labels_volume.physical_volume_ml())
    if previous is not None:
        result.replace = replacement(np.asarray(previous), np.asarray(data))
    if segmentation.probabilities is not None:
        score, score_kwargs = _layer_data(source, segmentation.probabilities, f"{base_name} probabilities", "image",
                                          {"model": segmentation.model, "source_layer": source.name})
        finite = score[np.isfinite(score)]
        limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if limits[0] == limits[1]:
            limits = (limits[0], limits[0] + 1.0)
        score_kwargs.update(blending="additive", opacity=0.6, contrast_limits=limits, visible=True)
        result.probabilities = LayerSpec(score, score_kwargs, "magma")
    return result


def measure_layer(labels: Any, source_metadata: Mapping[str, Any], names: Mapping[int, str],
                  reference: Any = None) -> list[Measurement]:
    """The table for a result layer as it is now (edits included); Dice against ``reference`` (a layer,
    read on the source grid as the result is: both in the volume's voxel order)."""
    volume = layer_volume(labels.data, layer_attributes(labels), records=[source_metadata])
    reference_data = None
    if reference is not None:
        reference_data = layer_volume(reference.data, layer_attributes(reference), records=[source_metadata]).array
    return measure(volume.array, volume.spacing, dict(names), reference_data,
                   f"the reference layer '{getattr(reference, 'name', '')}'")
