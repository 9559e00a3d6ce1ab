"""napari from notebooks: put volumes and label maps into a viewer with their physical geometry.

```python
import napari, clara_napari as cn
viewer = napari.Viewer()
image = cn.read_volume(cn.sample_path("mr_t1"))
labels = cn.segment(image, app="brain_extraction_t1")
cn.show(viewer, image, labels, app="brain_extraction_t1")   # the image and an overlaid Labels layer
viewer.window.add_plugin_dock_widget("clara-napari", "Triton Inference")
```

The layers get the same scale/translate/rotate and metadata as the plugin's reader gives, so the
plugin's writers, widget and export work on them too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .core.apps import App, resolve_app
from .core.errors import VolumeError
from .core.label_table import LabelTable
from .core.volume import Volume, read_volume

__all__ = ["show", "add_to_viewer"]


def _volume(value: Volume | str | Path) -> Volume:
    return value if isinstance(value, Volume) else read_volume(value)


def add_to_viewer(viewer, volume: Volume | str | Path, *, kind: str = "image", name: str | None = None,
                  app: str | Path | App | None = None, **kwargs: Any):
    """Add one volume to ``viewer`` as an Image (``kind="image"``) or Labels layer; returns the layer.

    Labels get the app's label names and colours when ``app`` is given. Extra keyword arguments go
    to ``viewer.add_image``/``add_labels`` (e.g. ``opacity``, ``colormap``).
    """
    from .napari._geometry import volume_to_layer

    volume = _volume(volume)
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', not {kind!r}.")
    if kind == "image":
        data, layer_kwargs = volume_to_layer(volume, name=name, kind="image")
        layer_kwargs.setdefault("colormap", "gray")
        layer_kwargs.update(kwargs)
        return viewer.add_image(data, **layer_kwargs)
    from .napari._labels import label_colormap

    extra: dict[str, Any] = {}
    table = LabelTable()
    if app is not None:
        resolved = app if isinstance(app, App) else resolve_app(app)
        table = resolved.config.label_table()
        extra = {"app": str(resolved.config_path), "labels": table.record()}
    data, layer_kwargs = volume_to_layer(volume, name=name or f"{volume.name} labels", kind="labels", **extra)
    if table:
        layer_kwargs["colormap"] = label_colormap(table)
        layer_kwargs["features"] = table.features()
    layer_kwargs.setdefault("opacity", 0.5)
    layer_kwargs.update(kwargs)
    return viewer.add_labels(data, **layer_kwargs)


def show(viewer, image: Volume | str | Path | None = None, labels: Volume | str | Path | None = None, *,
         app: str | Path | App | None = None, name: str | None = None):
    """Show an image and/or its label map in ``viewer`` (a napari Viewer); returns the layers added.

    The labels must lie on the image's grid (same size, spacing, origin and direction), as
    :func:`clara_napari.segment` returns them.
    """
    layers = []
    image_volume = _volume(image) if image is not None else None
    labels_volume = _volume(labels) if labels is not None else None
    if image_volume is not None and labels_volume is not None and not labels_volume.same_grid(image_volume):
        raise VolumeError(f"{labels_volume.name}: the labels are not on the image's grid "
                          f"(size {labels_volume.size} vs {image_volume.size}).")
    if image_volume is not None:
        layers.append(add_to_viewer(viewer, image_volume, kind="image", name=name))
    if labels_volume is not None:
        label_name = f"{name or (image_volume.name if image_volume is not None else labels_volume.name)} labels"
        layers.append(add_to_viewer(viewer, labels_volume, kind="labels", name=label_name, app=app))
    return layers
