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
from typing import TYPE_CHECKING

from .atomic import Transaction
from .errors import VolumeError
from .volume import safe_stem, volume_stem, write_volume

if TYPE_CHECKING:
    from .apps import App
    from .pipeline import Segmentation

META_FORMATS = ("meta", "data")


def _rgb(color: str) -> dict[str, float]:
    value = color.lstrip("#")
    r, g, b = (int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    return {"x": round(r, 4), "y": round(g, 4), "z": round(b, 4)}


def _component(regions: list[int], color: str, opacity: float, density: tuple[float, float]) -> dict:
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


def generated_render_config(labels: dict[int, tuple[str, str]]) -> dict:
    """Render settings in the Clara Deploy form, one transfer-function component per label.

    ``labels`` maps label value → (name, ``#rrggbb``). Region 0 (unlabelled tissue) is shown faintly
    in grey so the labels keep their anatomical context.
    """
    components = [_component([0], "#b3b3b3", 0.05, (0.3, 1.0))]
    components += [_component([value], color, 0.8, (0.0, 1.0)) for value, (_, color) in sorted(labels.items())]
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
                labels: dict[int, tuple[str, str]] | None = None) -> dict:
    """The bundle's ``config.meta``; ``labels`` (value → name, colour) is our addition for viewers
    that show label names (Render Servers ignore keys they do not know)."""
    if fmt == "data":
        meta = {"data": [{"file": density, "order": "DXYZ"}] + [{"file": m, "order": "MXYZ"} for m in masks],
                "name": name, "settings": "config_render.json"}
    else:
        meta = {"density": density, "name": name, "seg_masks": masks, "settings": "config_render.json"}
    if labels:
        meta["labels"] = {str(v): {"name": n, "color": c} for v, (n, c) in sorted(labels.items())}
    return meta


def app_labels(app: "App") -> dict[int, tuple[str, str]]:
    config = app.config
    return {v: (config.label_names()[v], config.label_colors()[v]) for v in config.labels}


def render_config_text(app: "App") -> str:
    """The app's ``config_render.json`` (a JSON object from inside the app folder, copied as it is),
    else one generated from the labels. It is only ever copied, never interpreted."""
    if app.render_config_path is not None:
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
    labels = app_labels(app) or {1: ("label 1", "#e6194b")}
    return json.dumps(generated_render_config(labels), indent=4) + "\n"


def bundle_names(stem: str) -> list[str]:
    """The files of one volume's bundle, in the order they are put in place (``config.meta`` last)."""
    return [f"{stem}.raw", f"{stem}.out.raw", f"{stem}.mhd", f"{stem}.out.mhd", "config_render.json", "config.meta"]


def write_publish_bundle(folder: str | Path, segmentation: "Segmentation", app: "App", *, fmt: str = "meta",
                         overwrite: bool = False, name: str | None = None,
                         transaction: Transaction | None = None) -> list[Path]:
    """Write the bundle of one volume into ``folder``; returns the paths written (meta last).

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
    txn = Transaction(overwrite=overwrite) if own else transaction
    txn.forbid |= {Path(p).resolve() for p in forbid}
    try:
        write_volume(segmentation.source.with_array(segmentation.source.array, path=None), txn.path(folder / density),
                     forbid=forbid)
        write_volume(segmentation.labels.with_array(segmentation.labels.array, path=None), txn.path(folder / mask),
                     forbid=forbid)
        txn.path(folder / "config_render.json").write_text(render_config_text(app), encoding="utf-8")
        meta = config_meta(segmentation.model or app.config.model_name, density, [mask], fmt, app_labels(app))
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
