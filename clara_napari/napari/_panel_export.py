"""The *Triton Inference* panel's export without Qt or napari: a snapshot of the image and result layers
(:func:`plan_export`, on the GUI thread) written as MetaImage, the Clara publish bundle, the
measurements as CSV and, for a DICOM source, a DICOM SEG (:func:`write_export`, in a worker), all of
them or none."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.apps import App
from ..core.errors import ClaraNapariError
from ..core.pipeline import Segmentation
from ..core.volume import Volume, safe_stem, write_volume
from ._panel import Measurement, to_csv
from ._panel_model import layer_attributes, path_text
from ._writer import layer_volume, smallest_label_dtype


@dataclass(frozen=True)
class ExportPlan:
    """A snapshot of what an export writes (the user may paint on the layer while it is written)."""

    target: Path
    stem: str
    image: Volume
    labels: Volume
    app: App
    model: str
    rows: list[Measurement]


def export_folder(text: Any) -> Path | None:
    """The export field as a folder; ``None`` when none is chosen."""
    value = path_text(text)
    return Path(value) if value else None


def plan_export(target: Path, source: Any, labels_layer: Any, app: App, model: str,
                rows: list[Measurement]) -> ExportPlan:
    """The volumes to export from the image and result layers (raises when they no longer share a grid)."""
    image = layer_volume(source.data, layer_attributes(source), records=[source.metadata])
    labels = layer_volume(labels_layer.data, layer_attributes(labels_layer), records=[source.metadata])
    labels = labels.with_array(labels.array.astype(smallest_label_dtype(labels.array), copy=True), path=None)
    if not labels.same_grid(image):
        raise ClaraNapariError(f"the Labels layer '{labels_layer.name}' is no longer on the grid of '{source.name}'.")
    stem = safe_stem(image.name if image.path is not None else source.name)
    return ExportPlan(Path(target), stem, image, labels, app, model, list(rows))


def write_export(plan: ExportPlan) -> list[Path]:
    """``<target>/output/<stem>.mhd``, the publish bundle ``<target>/publish/``, the measurements as CSV
    (and a DICOM SEG for a DICOM source): all of them or none."""
    from ..core.atomic import Transaction
    from ..core.components import VolumeWriter
    from ..core.dicom.series import is_dicom_series
    from ..core.dicom.writer import write_app_seg
    from ..core.publish import write_publish_bundle

    image, labels = plan.image, plan.labels
    header = plan.target / "output" / f"{plan.stem}.mhd"
    table = plan.target / "output" / f"{plan.stem}.measurements.csv"
    with Transaction(overwrite=True, forbid=[image.path]) as txn:
        write_volume(labels, txn.path(header), forbid=[image.path] if image.path else [])
        segmentation = Segmentation(source=image, outputs=[(VolumeWriter(), labels)], model=plan.model)
        bundle = write_publish_bundle(plan.target / "publish", segmentation, plan.app, overwrite=True, name=plan.stem,
                                      transaction=txn)
        if is_dicom_series(image.path):   # a DICOM series source: its DICOM SEG as well
            seg = plan.target / "output" / f"{plan.stem}.seg.dcm"
            write_app_seg(labels.with_array(labels.array, path=image.path), plan.app, txn.path(seg), model=plan.model)
            bundle.append(seg)
        txn.path(table).write_text(to_csv(plan.rows), encoding="utf-8")
        txn.commit()
    return [header, *bundle, table]
