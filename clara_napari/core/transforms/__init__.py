"""Clara Train 3 transforms by name (see ``TRANSFORMS``); importing this registers them all."""
from . import intensity, labels, spatial  # noqa: F401  (registration side effects)
from .base import TRANSFORMS, TRAINING_ONLY, FieldMeta, Sample, Transform

__all__ = ["TRANSFORMS", "TRAINING_ONLY", "FieldMeta", "Sample", "Transform"]
