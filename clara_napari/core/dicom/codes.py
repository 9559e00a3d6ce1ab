"""What each segment of a DICOM SEG says about itself: SNOMED CT category/type, CIELab colour.

The bundled apps' labels (brain, lung) have their SNOMED CT codes here. A user app may give its
own in ``config_seg.json`` beside its ``config_inference.json`` (like ``config_render.json``)::

    {"labels": {"1": {"category": ["91723000", "SCT", "Anatomical Structure"],
                      "type": ["10200004", "SCT", "Liver"]}}}

Labels with neither get category and type *Tissue* (SCT 85756007), which is true of any label.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..label_table import LabelTable

#: (value, scheme designator, meaning)
Code = tuple[str, str, str]

ANATOMICAL_STRUCTURE: Code = ("91723000", "SCT", "Anatomical Structure")
TISSUE: Code = ("85756007", "SCT", "Tissue")
MORPHOLOGICALLY_ALTERED: Code = ("49755003", "SCT", "Morphologically Altered Structure")

#: label name (lower case) → (category, type)
KNOWN: dict[str, tuple[Code, Code]] = {
    "brain": (ANATOMICAL_STRUCTURE, ("12738006", "SCT", "Brain")),
    "lung": (ANATOMICAL_STRUCTURE, ("39607008", "SCT", "Lung")),
    "lungs": (ANATOMICAL_STRUCTURE, ("39607008", "SCT", "Lung")),
    "left lung": (ANATOMICAL_STRUCTURE, ("44029006", "SCT", "Left lung")),
    "right lung": (ANATOMICAL_STRUCTURE, ("3341006", "SCT", "Right lung")),
    "tumour": (MORPHOLOGICALLY_ALTERED, ("108369006", "SCT", "Neoplasm")),
    "tumor": (MORPHOLOGICALLY_ALTERED, ("108369006", "SCT", "Neoplasm")),
}
SEG_CONFIG = "config_seg.json"


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: the label value it holds, its name, ``#rrggbb`` colour and codes."""

    value: int
    name: str
    color: str
    category: Code
    type: Code


def segment_infos(labels: LabelTable, app_folder: Path | None = None, values=()) -> list[SegmentInfo]:
    """One :class:`SegmentInfo` per app label (and per other value found in ``values``), by value."""
    custom = _load_custom(app_folder / SEG_CONFIG) if app_folder is not None and (app_folder / SEG_CONFIG).is_file() else {}
    infos = []
    for value in sorted(set(labels.values) | {int(v) for v in values if int(v) != 0}):
        label = labels.get(value)
        name = (label.name if label is not None else "") or f"label {value}"
        color = label.color if label is not None else "#ffffff"
        category, kind = custom.get(value) or KNOWN.get(name.strip().lower(), (TISSUE, TISSUE))
        infos.append(SegmentInfo(value, name, color, category, kind))
    return infos


def _load_custom(file: Path) -> dict[int, tuple[Code, Code]]:
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read it as JSON ({type(exc).__name__}).", file=str(file)) from None
    labels = raw.get("labels") if isinstance(raw, dict) else None
    if not isinstance(labels, dict):
        raise ConfigError("needs an object 'labels' mapping label values to their codes.", file=str(file))
    out = {}
    for key, entry in labels.items():
        if not re.fullmatch(r"[1-9][0-9]{0,4}", str(key)):
            raise ConfigError(f"label values must be whole numbers 1..65535, got {key!r}.", path=f"labels.{key}", file=str(file))
        if not isinstance(entry, dict) or set(entry) != {"category", "type"}:
            raise ConfigError("needs exactly 'category' and 'type'.", path=f"labels.{key}", file=str(file))
        codes = []
        for part in ("category", "type"):
            code = entry[part]
            if (not isinstance(code, list) or len(code) != 3 or not all(isinstance(c, str) and c.strip() for c in code)
                    or any(len(c) > 64 for c in code)):
                raise ConfigError("must be [value, scheme, meaning] (three non-empty strings).",
                                  path=f"labels.{key}.{part}", file=str(file))
            codes.append(tuple(c.strip() for c in code))
        out[int(key)] = (codes[0], codes[1])
    return out


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)
