"""The Clara Render Server publish bundle.

Per volume: the original volume as ``<name>.mhd/.raw``, the segmentation as
``<name>.out.mhd/.raw`` (its ``ElementDataFile`` names ``<name>.out.raw``), ``config_render.json``
(the app's own, else one generated from the app's labels) and ``config.meta`` naming them.
Everything is written into a staging folder and renamed into place, ``config.meta`` last, so a
watcher never sees a bundle whose meta names a file that is not there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import Transaction
from .errors import VolumeError
from .label_table import LabelTable
from .volume import safe_stem, volume_stem, write_volume

if TYPE_CHECKING:
    from .apps import App
    from .pipeline import Segmentation

META_FORMATS = ("meta", "data")


def _rgb(rgb: tuple[float, float, float]) -> dict[str, float]:
    r, g, b = rgb
    return {"x": round(r, 4), "y": round(g, 4), "z": round(b, 4)}


#: region 0 (unlabelled tissue), shown faintly in grey
_TISSUE_RGB = (0xb3 / 255.0, 0xb3 / 255.0, 0xb3 / 255.0)


def _component(regions: list[int], color: tuple[float, float, float], opacity: float,
               density: tuple[float, float]) -> dict:
    rgb = _rgb(color)
    return {
        "activeRegions": regions,
        "range": {"min": density[0], "max": density[1]},
        "opacity": opacity,
        "opacityProfile": "SQUARE",
        "opacityTransition": 0.2,
        "roughness": 0.5,
        "diffuseStart": rgb, "diffuseEnd": rgb,
        "specularStart": {"x": 0.2, "y": 0.2, "z": 0.2}, "specularEnd": {"x": 0.2, "y": 0.2, "z": 0.2},
        "emissiveStart": {"x": 0.0, "y": 0.0, "z": 0.0}, "emissiveEnd": {"x": 0.0, "y": 0.0, "z": 0.0},
        "emissiveStrength": 0.0,
    }


def generated_render_config(labels: LabelTable) -> dict:
    """Render settings in the Clara Deploy form, one transfer-function component per label.

    Region 0 (unlabelled tissue) is shown faintly in grey so the labels keep their anatomical context.
    """
    components = [_component([0], _TISSUE_RGB, 0.05, (0.3, 1.0))]
    components += [_component([label.value], label.rgb, 0.8, (0.0, 1.0)) for label in labels]
    return {
        "BackgroundLight": {"intensity": 0.5, "topColor": {"x": 0.4, "y": 0.4, "z": 0.4},
                            "horizonColor": {"x": 0.2, "y": 0.2, "z": 0.2}, "bottomColor": {"x": 0.1, "y": 0.1, "z": 0.1},
                            "enable": True, "castLight": True, "showBackground": True},
        "Camera": {"name": "Cinematic", "eye": {"x": 0.0, "y": 0.0, "z": -2.5}, "lookAt": {"x": 0.0, "y": 0.0, "z": 0.0},
                   "up": {"x": 0.0, "y": 1.0, "z": 0.0}, "fieldOfView": 30.0, "pixelAspectRatio": 1.0},
        "CameraAperture": {"enable": False, "aperture": 0.1, "autoFocus": True, "focusDistance": 1.0},
        "DataCrop": {"min": {"x": 0.0, "y": 0.0, "z": 0.0}, "max": {"x": 1.0, "y": 1.0, "z": 1.0}},
        "DataView": {"name": "Cinematic", "zoomFactor": 1.0, "viewOffset": {"x": 0.0, "y": 0.0}},
        "Light": [{"enable": True, "direction": {"x": 0.5, "y": -0.5, "z": 1.0}, "position": {"x": -1.0, "y": 1.0, "z": -2.0},
                   "size": 0.5, "intensity": 30.0, "color": {"x": 1.0, "y": 1.0, "z": 1.0}}],
        "PostProcessDenoise": {"method": "AI", "radius": 3, "spatialWeight": 0.05, "depthWeight": 3.0, "noiseThreshold": 0.2},
        "PostProcessTonemap": {"enable": True, "exposure": 0.5},
        "RenderSettings": {"interpolationMode": "BSPLINE", "maxIterations": 1000, "stepSize": 1.0, "shadowStepSize": 1.0},
        "TransferFunction": {"blendingProfile": "BLENDED_OPACITY", "densityScale": 100.0, "globalOpacity": 1.0,
                             "gradientScale": 1.0, "shadingProfile": "HYBRID", "components": components},
        "View": {"cameraName": "Cinematic", "mode": "CINEMATIC", "name": "Cinematic", "dataViewName": "Cinematic"},
    }


def config_meta(name: str, density: str, masks: list[str], fmt: str = "meta",
                labels: LabelTable | None = None) -> dict:
    """The bundle's ``config.meta``; ``labels`` (value → name, colour) is our addition for viewers
    that show label names (Render Servers ignore keys they do not know)."""
    if fmt == "data":
        meta: dict[str, Any] = {"data": [{"file": density, "order": "DXYZ"}] + [{"file": m, "order": "MXYZ"} for m in masks],
                "name": name, "settings": "config_render.json"}
    else:
        meta = {"density": density, "name": name, "seg_masks": masks, "settings": "config_render.json"}
    if labels:
        meta["labels"] = labels.meta()
    return meta


def render_config_text(app: App | None, labels: LabelTable | None = None) -> str:
    """The app's ``config_render.json`` (a JSON object from inside the app folder, copied as it is),
    else one generated from ``labels`` (default: the app's). It is only ever copied, never interpreted."""
    if app is not None and app.render_config_path is not None:
        from .apps import check_inside_app
        from .errors import ConfigError

        path = check_inside_app(app.render_config_path, app.folder)
        file = str(app.render_config_path)
        try:
            if path.stat().st_size > 1024 * 1024:
                raise ConfigError("larger than 1 MiB; not a render config.", file=file)
            text = path.read_text(encoding="utf-8")
            if not isinstance(json.loads(text), dict):
                raise ConfigError("the top level must be a JSON object.", file=file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the render config ({getattr(exc, 'strerror', None) or exc}).",
                              file=file) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.", file=file) from None
        except RecursionError:
            raise ConfigError("the JSON is nested too deeply.", file=file) from None
        return text
    if labels is None:
        labels = app.config.label_table() if app is not None else LabelTable()
    labels = labels or LabelTable.numbered([1])
    return json.dumps(generated_render_config(labels), indent=4) + "\n"


def bundle_names(stem: str) -> list[str]:
    """The files of one volume's bundle, in the order they are put in place (``config.meta`` last)."""
    return [f"{stem}.raw", f"{stem}.out.raw", f"{stem}.mhd", f"{stem}.out.mhd", "config_render.json", "config.meta"]


def write_publish_bundle(folder: str | Path, segmentation: Segmentation, app: App | None, *, fmt: str = "meta",
                         overwrite: bool = False, name: str | None = None,
                         transaction: Transaction | None = None, labels: LabelTable | None = None) -> list[Path]:
    """Write the bundle of one volume into ``folder``; returns the paths written (meta last).

    ``labels`` default to the app's; a label map without an app (napari) passes its own (the render
    settings are then generated from them).

    With ``transaction`` the files are only staged in it (the caller commits them together with
    the volume's other outputs) and the paths they will have are returned.
    """
    if fmt not in META_FORMATS:
        raise VolumeError(f"unknown publish format {fmt!r} (use {' or '.join(META_FORMATS)}).")
    folder = Path(folder)
    stem = safe_stem(name or (volume_stem(segmentation.source.path) if segmentation.source.path else "volume"))
    density, mask = f"{stem}.mhd", f"{stem}.out.mhd"
    names = bundle_names(stem)
    if not overwrite:  # an early, friendly refusal; the commit itself never replaces a file either
        for existing in (folder / n for n in names):
            if existing.exists() or existing.is_symlink():
                raise VolumeError(f"{existing}: exists already in the publish folder (use --overwrite to replace it).")
    forbid = [segmentation.source.path] if segmentation.source.path else []
    own = transaction is None
    txn = transaction if transaction is not None else Transaction(overwrite=overwrite)
    txn.forbid |= {Path(p).resolve() for p in forbid}
    try:
        write_volume(segmentation.source.with_array(segmentation.source.array, path=None), txn.path(folder / density),
                     forbid=forbid)
        write_volume(segmentation.labels.with_array(segmentation.labels.array, path=None), txn.path(folder / mask),
                     forbid=forbid)
        if labels is None:
            labels = app.config.label_table() if app is not None else LabelTable()
        txn.path(folder / "config_render.json").write_text(render_config_text(app, labels), encoding="utf-8")
        model = segmentation.model or (app.config.model_name if app is not None else "")
        meta = config_meta(model, density, [mask], fmt, labels)
        txn.path(folder / "config.meta").write_text(json.dumps(meta, indent=4, sort_keys=True) + "\n",
                                                    encoding="utf-8")
        if own:
            txn.commit()
        return [folder / n for n in names]
    except OSError as exc:
        raise VolumeError(f"{folder}: cannot write the publish bundle ({exc.strerror or exc}).") from None
    finally:
        if own:
            txn.discard()
