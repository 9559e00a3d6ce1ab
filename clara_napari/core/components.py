"""The non-transform components of a Clara config: inferers, model loaders and writers.

Inferers (and how each runs the model) live in :mod:`.inferers`, writers (and how each makes its
output) in :mod:`.writers`; both are re-exported here, where the config loader and plugins find them.
"""
from __future__ import annotations

from pathlib import Path

from .inferers import (
    INFERERS,
    MAX_OVERLAP,
    InferenceRun,
    InfererSpec,
    ScanWindowInferer,
    SimpleInferer,
    SlidingWindowInferer,
)
from .registry import Component, Registry
from .writers import (
    EVAL_OUTPUT,
    WRITERS,
    ClassificationResult,
    ClassificationWriter,
    SaveImaged,
    VolumeWriter,
    Writer,
    resolve_write_path,
)

__all__ = ["INFERERS", "MAX_OVERLAP", "InferenceRun", "InfererSpec", "ScanWindowInferer", "SimpleInferer",
           "SlidingWindowInferer", "MODEL_LOADERS", "TritonModelLoader", "MmarModelLoader", "EVAL_OUTPUT", "WRITERS",
           "ClassificationResult", "ClassificationWriter", "SaveImaged", "VolumeWriter", "Writer", "resolve_write_path"]

MODEL_LOADERS = Registry("model loader")


@MODEL_LOADERS.register("TRTISModelLoader", "TritonModelLoader")
class TritonModelLoader(Component):
    """Names the model's ``config.pbtxt``; checked against the server's config before inferring."""

    model_spec_file_name: str


@MODEL_LOADERS.register("FrozenGraphModelLoader", "CheckpointLoader", "TorchScriptModelLoader")
class MmarModelLoader(Component):
    """A Clara Train model loader naming a model file of the MMAR (a frozen TensorFlow graph, a
    checkpoint, TorchScript). The file is never read: the model it stands for is served by Triton
    under the inferer's ``model_name`` or ``--model NAME`` (the loader is mapped, see
    :meth:`InferenceConfig.model_note`)."""

    model_file_path: str = ""
    checkpoint_dir: str = ""
    checkpoint_file_prefix: str = "model.ckpt"
    input_node_names: list[str] | dict[str, str] | None = None
    output_node_names: list[str] | dict[str, str] | None = None
    infer_in_training_mode: bool = False

    def describe(self) -> str:
        what = self.model_file_path or self.checkpoint_dir or "model"
        return f"{self.config_name} ({Path(what).name or what})"


from .dicom import writer as _dicom_writer  # noqa: E402,F401  (registers DicomSegWriter)
