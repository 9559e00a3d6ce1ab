"""Clara Train 3 (and Clara 4 MONAI-style) transforms by name (see ``TRANSFORMS``); importing this registers them all."""
from . import intensity, labels, monai_post, monai_style, spatial  # noqa: F401  (registration side effects)
from .base import TRAINING_ONLY, TRANSFORMS, FieldMeta, Sample, Transform

__all__ = ["TRANSFORMS", "TRAINING_ONLY", "FieldMeta", "Sample", "Transform"]
