"""The one label table: value → name and ``#rrggbb`` colour, for every place that shows or writes labels.

Built from an app's ``labels`` (:meth:`LabelTable.from_config`), from the record a napari layer
carries (:meth:`LabelTable.from_record`) or numbered from the values found in a label map
(:meth:`LabelTable.numbered`); the config, the publish bundle, the DICOM SEG writer, the
classification writer, the napari writers, widget and notebook all read it from here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: the default palette: label ``v`` without a colour of its own gets ``PALETTE[(v - 1) % len(PALETTE)]``
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
_HEX = re.compile(r"#[0-9a-f]{6}")


def default_color(value: int) -> str:
    """The palette colour of label ``value`` (1 gets the first)."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Label:
    """One label: its value in the label map, its name and its ``#rrggbb`` colour (lower case)."""

    value: int
    name: str
    color: str

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.color):
            raise ValueError(f"label {self.value}: colour {self.color!r} is not '#rrggbb'.")

    @property
    def rgb(self) -> tuple[float, float, float]:
        """The colour as three floats in [0, 1]."""
        return (int(self.color[1:3], 16) / 255.0, int(self.color[3:5], 16) / 255.0, int(self.color[5:7], 16) / 255.0)

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        return (*self.rgb, 1.0)


@dataclass(frozen=True)
class LabelTable:
    """The labels of an app (or of a label map), ordered by value."""

    entries: tuple[Label, ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.entries, key=lambda label: label.value))
        if len({label.value for label in ordered}) != len(ordered):
            raise ValueError("a label table names each value once.")
        object.__setattr__(self, "entries", ordered)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, labels: Mapping[int, Any]) -> LabelTable:
        """From a config's ``labels`` (value → object with ``name`` and ``color``, ``""`` for the palette's)."""
        return cls(tuple(Label(int(v), info.name, (info.color or default_color(v)).lower()) for v, info in labels.items()))

    @classmethod
    def from_pairs(cls, pairs: Mapping[int, tuple[str, str]]) -> LabelTable:
        """From value → (name, colour); an empty colour gets the palette's."""
        return cls(tuple(Label(int(v), str(n), (c or default_color(v)).lower()) for v, (n, c) in pairs.items()))

    @classmethod
    def numbered(cls, values: Iterable[int]) -> LabelTable:
        """``label N`` in the palette's colours for every non-zero value (a label map without an app)."""
        return cls(tuple(Label(v, f"label {v}", default_color(v)) for v in sorted({int(v) for v in values} - {0})))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LabelTable:
        """From a napari layer record's ``labels`` (``{"1": [name, colour]}``, as :meth:`record` writes);
        entries that are not well formed are left out (a record is data from a file or a session)."""
        entries: dict[int, Label] = {}
        raw = record.get("labels")
        for key, item in (raw.items() if isinstance(raw, Mapping) else ()):
            try:
                value, name, color = int(key), str(item[0]), str(item[1]).lower()
                entries[value] = Label(value, name, color)
            except (TypeError, ValueError, IndexError, KeyError):
                continue
        return cls(tuple(entries.values()))

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Label]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def values(self) -> list[int]:
        return [label.value for label in self.entries]

    def get(self, value: int) -> Label | None:
        return next((label for label in self.entries if label.value == value), None)

    def names(self) -> dict[int, str]:
        return {label.value: label.name for label in self.entries}

    def colors(self) -> dict[int, str]:
        return {label.value: label.color for label in self.entries}

    def name_of(self, value: int, default: str | None = None) -> str:
        """The name of ``value``; else ``default``, else ``label N``."""
        label = self.get(value)
        return label.name if label is not None else (default if default is not None else f"label {value}")

    # -- forms other parts need -------------------------------------------------------------
    def record(self) -> dict[str, list[str]]:
        """The napari layer record's form: ``{"1": [name, colour]}`` (read back by :meth:`from_record`)."""
        return {str(label.value): [label.name, label.color] for label in self.entries}

    def meta(self) -> dict[str, dict[str, str]]:
        """The publish bundle's ``config.meta`` form: ``{"1": {"name": ..., "color": ...}}``."""
        return {str(label.value): {"name": label.name, "color": label.color} for label in self.entries}

    def features(self) -> dict[str, list]:
        """A napari Labels layer's ``features``: one row per value, background (0) first."""
        return {"index": [0] + self.values, "name": ["background"] + [label.name for label in self.entries]}

    def color_dict(self) -> dict[int | None, tuple[float, float, float, float]]:
        """Value → RGBA for a direct colour map: 0 transparent, values not listed white."""
        table: dict[int | None, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0), None: (1.0, 1.0, 1.0, 1.0)}
        table.update({label.value: label.rgba for label in self.entries})
        return table
