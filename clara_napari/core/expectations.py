"""What an app expects of its input and its result, and the checks that say when a run is not that.

An app states in its ``config_inference.json`` (optional top-level key ``"expectations"``) the
modality it was made for, the plausible range of the input's intensities and the plausible
volume of each label::

    "expectations": {
      "description": "a T1-weighted MRI of the head",
      "modality": ["MR"],
      "series_description_excludes": ["T2", "FLAIR"],
      "intensity": {"p1": [-100, null], "p99": [null, null]},
      "labels": {"1": {"min_ml": 700, "max_ml": 2200}}
    }

A segmentation network answers every question, also the wrong one (a chest CT through a brain
app gives litres of "brain"); these checks turn such a run into findings: one sentence each,
shown as warnings on the result line and in the log, or an :class:`ImplausibleError` in strict
mode. The DICOM tags Modality (0008,0060) and SeriesDescription (0008,103E) are used when the
volume carries them (the DICOM reader keeps every tag in ``Volume.metadata``).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: DICOM tags as SimpleITK names them in a series' metadata
MODALITY_TAG = "0008|0060"
SERIES_DESCRIPTION_TAG = "0008|103e"
#: MetaImage's ``Modality`` field (``MET_MOD_CT``) → the DICOM code
_MET_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}
#: at most this many voxels (an even stride through the volume) go into the intensity percentiles
SAMPLE_VOXELS = 2_000_000

Bound = float | None


class LabelVolume(BaseModel):
    """Plausible volume of one label in millilitres (either bound may be left out)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    min_ml: float = Field(0.0, ge=0.0)
    max_ml: Bound = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _order(self):
        if self.max_ml is not None and self.max_ml < self.min_ml:
            raise ValueError("max_ml must not be smaller than min_ml")
        return self


class IntensityRange(BaseModel):
    """Plausible ranges ``[low, high]`` (``null`` = open) of the input's 1st and 99th percentiles."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    p1: tuple[Bound, Bound] = (None, None)
    p99: tuple[Bound, Bound] = (None, None)

    @field_validator("p1", "p99", mode="before")
    @classmethod
    def _pair(cls, value):
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and len(value) == 2 and all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
            value = tuple(None if v is None else float(v) for v in value)
            if None not in value and value[0] > value[1]:
                raise ValueError("needs [low, high] with low <= high")
        return value


class Expectations(BaseModel):
    """What an app was made for; every field is optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    description: str = ""
    modality: list[str] = []
    series_description_excludes: list[str] = []
    intensity: IntensityRange = IntensityRange()
    labels: dict[str, LabelVolume] = {}

    @field_validator("modality")
    @classmethod
    def _codes(cls, value):
        for code in value:
            if not re.fullmatch(r"[A-Z][A-Z0-9]{1,15}", code):
                raise ValueError(f"DICOM modality codes are capital letters (CT, MR, PT), got {code!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value):
        for key in value:
            if not (key.isdigit() and 0 < int(key) < 65536):
                raise ValueError(f"label values must be whole numbers 1..65535, got {key!r}")
        return value

    @property
    def what(self) -> str:
        return self.description or "this app's input"


def parse_expectations(raw: Any, file: str = "") -> Expectations | None:
    """The config's ``"expectations"`` value, checked (``None`` when the app states none)."""
    if raw is None:
        return None
    try:
        return Expectations.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        raise ConfigError(err["msg"].removeprefix("Value error, ") + f" (got {err.get('input')!r}).",
                          path=f"expectations{loc}", file=file) from None


# -- the checks ------------------------------------------------------------------------------
def check_input(volume, expectations: Expectations | None) -> list[str]:
    """Findings about the input volume (empty when it looks like what the app expects).

    A constant volume (an all-zero export, a blank series) is a finding for every app.
    """
    findings: list[str] = []
    array = volume.array
    sample = _sample(array)
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.0])) if sample.size else (0.0, 0.0)
    if sample.size and float(sample.min()) == float(sample.max()) and _is_constant(array):
        findings.append(f"input: every voxel is {_number(float(sample.min()))}; the volume holds no image.")
    if expectations is None:
        return findings
    what = expectations.what
    modality = dicom_modality(volume.metadata)
    if modality and expectations.modality and modality not in expectations.modality:
        findings.append(f"input: the modality is {modality}, {what} is {' or '.join(expectations.modality)}.")
    description = volume.metadata.get(SERIES_DESCRIPTION_TAG, "").strip()
    for word in expectations.series_description_excludes:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", description, re.IGNORECASE):
            findings.append(f"input: the series description {description!r} names {word}, not {what}.")
            break
    for name, value, (lo, hi) in (("1st", low, expectations.intensity.p1), ("99th", high, expectations.intensity.p99)):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            findings.append(f"input: the {name} intensity percentile is {_number(value)}, where {what} has "
                            f"{_interval(lo, hi)}.")
    return findings


def label_volumes_ml(labels, names: dict[int, str]) -> dict[str, float]:
    """Millilitres per label: every label the app names (0 ml when absent), then any other value found."""
    array = np.asarray(labels.array)
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    if array.dtype.kind in "ui" and array.size and array.min() >= 0 and array.max() < 65536:
        counts = np.bincount(array.ravel())
        found = {int(v): int(c) for v, c in enumerate(counts) if v and c}
    else:
        values, counts = np.unique(array, return_counts=True)
        found = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v}
    volumes = {names.get(value, f"label {value}"): found.get(value, 0) * voxel_ml for value in names}
    for value, count in sorted(found.items()):
        if value not in names:
            volumes[f"label {value}"] = count * voxel_ml
    return volumes


def check_output(volumes_ml: dict[str, float], names: dict[int, str], expectations: Expectations | None) -> list[str]:
    """Findings about the result's volume per label."""
    if expectations is None:
        return []
    findings = []
    for key, bounds in expectations.labels.items():
        name = names.get(int(key), f"label {key}")
        ml = volumes_ml.get(name, 0.0)
        if ml < bounds.min_ml or (bounds.max_ml is not None and ml > bounds.max_ml):
            findings.append(f"result: {name} is {_ml(ml)}, where {_interval(bounds.min_ml, bounds.max_ml)} ml is "
                            f"plausible for {expectations.what}.")
    return findings


def format_volumes(volumes_ml: dict[str, float]) -> str:
    """``brain 1937 ml`` / ``lung 3912 ml, tumour 12.5 ml``."""
    return ", ".join(f"{name} {_ml(ml)}" for name, ml in volumes_ml.items()) or "no labels"


def dicom_modality(metadata: dict[str, str]) -> str:
    """The DICOM Modality code of a volume's metadata (DICOM tag or MetaImage field), else ``""``."""
    value = (metadata.get(MODALITY_TAG) or "").strip().upper()
    if not value:
        value = _MET_MODALITIES.get((metadata.get("Modality") or "").strip().upper(), "")
    return value


# -- helpers ---------------------------------------------------------------------------------
def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    sample = flat[::step]
    return sample if sample.dtype.kind in "fiu" else sample.astype(np.float64)


def _is_constant(array: np.ndarray) -> bool:
    flat = array.reshape(-1)
    return bool(flat.size) and bool((flat == flat[0]).all())


def _number(value: float) -> str:
    return f"{value:.4g}" if value != int(value) or abs(value) >= 1e7 else f"{int(value)}"


def _ml(value: float) -> str:
    return f"{value:.0f} ml" if value >= 100 else f"{value:.3g} ml" if value > 0 else "0 ml"


def _interval(lo: Bound, hi: Bound) -> str:
    if lo is None:
        return f"at most {_number(hi)}" if hi is not None else "any value"
    if hi is None:
        return f"at least {_number(lo)}"
    return f"{_number(lo)} to {_number(hi)}"
