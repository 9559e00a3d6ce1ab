"""Inferer, model-loader and writer components of a Clara config (the non-transform parts)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from .registry import Component, Registry
from .transforms.spatial import Dtype

INFERERS = Registry("inferer")
MODEL_LOADERS = Registry("model loader")
WRITERS = Registry("writer")


class InfererSpec(Component):
    """What every inferer shares: which model, where (Clara's TRTIS args) and how to send requests."""

    scanning: ClassVar[bool] = False

    model_name: str = ""
    model_version: str = ""
    ip: str | None = None
    server_ip: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["HTTP", "GRPC", "http", "grpc"] = "HTTP"
    output_type: Literal["RAW", "CLASSIFICATION"] = "RAW"
    batch_size: int | None = Field(None, ge=1)
    requests_in_flight: int = Field(2, ge=1, le=64)
    timeout_s: float = Field(120.0, gt=0)
    input_name: str = ""
    output_name: str = ""
    pad_value: float = 0.0

    @property
    def host(self) -> str | None:
        return self.server_ip or self.ip

    @property
    def address(self) -> str | None:
        """``host:port`` from the config args, if they name a server."""
        if not self.host:
            return None
        return f"{self.host}:{self.port or (8001 if self.protocol.upper() == 'GRPC' else 8000)}"


@INFERERS.register("TRTISScanWindowInferer", "TritonScanWindowInferer", "TFScanWindowInferer",
                   "ScanWindowInferer")
class ScanWindowInferer(InfererSpec):
    """Scanning windows of ``roi_size`` [x, y, z] (default: the model's fixed dims)."""

    scanning: ClassVar[bool] = True

    roi_size: list[int] | None = None
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blending: Literal["constant", "gaussian"] = "constant"

    @field_validator("roi_size")
    @classmethod
    def _positive(cls, value):
        if value is not None and (len(value) != 3 or any(v <= 0 for v in value)):
            raise ValueError("needs three positive whole numbers [x, y, z]")
        return value


@INFERERS.register("TRTISSimpleInferer", "TritonSimpleInferer", "TFSimpleInferer", "SimpleInferer")
class SimpleInferer(InfererSpec):
    """One request with the whole volume, padded to a multiple of ``pad_to_multiple`` voxels."""

    pad_to_multiple: int = Field(1, ge=1)


@MODEL_LOADERS.register("TRTISModelLoader", "TritonModelLoader")
class TritonModelLoader(Component):
    """Names the model's ``config.pbtxt``; checked against the server's config before inferring."""

    model_spec_file_name: str


@WRITERS.register("WriteNifti", "WriteMetaImage", "WriteMhd", "WriteVolume")
class VolumeWriter(Component):
    """Writes ``field`` with pixel type ``dtype`` on the input's grid.

    The operator contract names the file (``<output>/<input name>.mhd``); ``format`` may ask
    for another volume format, ``write_path`` for another folder.
    """

    field: str = "model"
    dtype: Dtype = "uint8"
    write_path: str = ""
    format: Literal["mhd", "mha", "nii", "nii.gz", "nrrd"] = "mhd"
    compress: bool = False
    is_label: bool = True
