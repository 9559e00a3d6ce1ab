"""What every Clara 4 (MONAI-style) transform shares: ``keys`` (absent ones skipped) and per-key args."""
from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..errors import ConfigError
from ..registry import as_field_list
from .base import Sample, Transform


def one_per_key(value: Any, keys: list[str], name: str) -> list[Any]:
    """MONAI's per-key args: one value for all keys, or a list with one value per key."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(keys):
            raise ConfigError(f"{name}: {len(value)} values for {len(keys)} keys.")
        return list(value)
    return [value] * len(keys)


class MonaiTransform(Transform):
    """``keys``: one data key or a list; keys absent at inference (``label``) are skipped."""

    keys: list[str]
    allow_missing_keys: bool = False

    _normalise_keys = field_validator("keys", mode="before")(as_field_list)

    def present(self, sample: Sample) -> list[tuple[int, str]]:
        return [(i, key) for i, key in enumerate(self.keys) if key in sample]
