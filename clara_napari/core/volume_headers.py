"""Header checks of volume files: what a file declares is refused before SimpleITK reads a voxel.

Sizes (more than :data:`MAX_VOXEL_BYTES`, or than the memory available), dimensions and channels,
truncated uncompressed or gzip data, and lying or hostile MetaImage headers; also the readable
reason of an ITK exception. :mod:`.volume` reads and writes; these checks come first.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import VolumeError
from .input_files import check_data_sizes, metaimage_data_files


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume's header says, before any voxel is read."""

    path: Path
    size: tuple[int, int, int]              # (x, y, z)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    voxel_bytes: int                        # bytes per voxel, all components

    @property
    def voxels(self) -> int:
        return math.prod(self.size)


#: Refuse volumes larger than this many bytes before reading their voxels.
MAX_VOXEL_BYTES = 16 * 1024**3

_MET_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def check_information(path: Path, dimension: int, size: Iterable[int], components: int, pixel_id: int,
                       allow_channels: bool) -> int:
    """Refuse what the header says before any voxel is read; returns the declared voxel bytes."""
    import SimpleITK as sitk

    size = tuple(size)
    if dimension < 3 or (dimension == 3 and min(size) <= 1):
        raise VolumeError(f"{path}: the image is 2D (size {'x'.join(map(str, size))}); a 3D volume is needed.")
    if dimension > 3:
        raise VolumeError(f"{path}: the image is {dimension}D (size {'x'.join(map(str, size))}); a 3D volume is needed.")
    if components > 1 and not allow_channels:
        raise VolumeError(f"{path}: the voxels have {components} components; a single-channel volume is needed.")
    item = sitk.Image([1, 1], pixel_id).GetSizeOfPixelComponent()
    total = math.prod(size) * max(components, 1) * item
    if total > MAX_VOXEL_BYTES:
        raise VolumeError(f"{path}: the header declares {total / 1024**3:.1f} GiB of voxels, more than the "
                          f"{MAX_VOXEL_BYTES / 1024**3:.0f} GiB this tool reads.")
    available = available_memory()
    if available is not None and total > 0.8 * available:
        raise VolumeError(f"{path}: the header declares {total / 1024**3:.1f} GiB of voxels; only "
                          f"{available / 1024**3:.1f} GiB of memory is available.")
    return total


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_inline_data(path: Path, declared: int) -> None:
    """An uncompressed single-file volume shorter than its declared voxels is truncated (or lies)."""
    name = path.name.lower()
    if name.endswith(".nii"):
        compressed = False
    elif name.endswith(".nrrd"):
        head = path.read_bytes()[:8192].lower()
        compressed = b"encoding: raw" not in head or b"data file:" in head or b"datafile:" in head
    elif name.endswith(".mha"):
        head = mha_header_bytes(path).lower()
        compressed = b"compresseddata = true" in head or b"elementdatafile = local" not in head
    else:
        compressed = True
    if not compressed and path.stat().st_size < declared:
        raise VolumeError(f"{path}: the file holds {path.stat().st_size} bytes, fewer than the {declared} bytes of "
                          "voxels its header declares; it is truncated.")


def check_gzip(path: Path, declared: int) -> None:
    """ITK reads a truncated or corrupt gzip stream without complaint (and zero-fills); check it whole."""
    import gzip
    import zlib

    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(8 << 20):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError(f"{path}: the gzip data is corrupt or truncated ({exc}).") from None
    if size < declared:
        raise VolumeError(f"{path}: the decompressed data hold {size} bytes, fewer than the {declared} bytes of voxels "
                          "the header declares; it is truncated.")


def check_metaimage_header(path: Path) -> None:
    """Refuse lying or hostile MetaImage headers before SimpleITK allocates anything."""
    try:
        raw = path.read_bytes()[: 64 * 1024] if path.suffix.lower() == ".mhd" else mha_header_bytes(path)
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise VolumeError(f"{path}: not a MetaImage header (it is not text).") from None
    fields = {}
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    if "DimSize" not in fields or "ElementType" not in fields or "ElementDataFile" not in fields:
        raise VolumeError(f"{path}: not a MetaImage header (DimSize, ElementType or ElementDataFile missing).")
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
    except ValueError:
        raise VolumeError(f"{path}: DimSize '{fields['DimSize']}' is not a list of whole numbers.") from None
    if not dims or any(d <= 0 for d in dims):
        raise VolumeError(f"{path}: DimSize '{fields['DimSize']}' must list positive sizes.")
    element = fields["ElementType"]
    if element not in _MET_BYTES:
        raise VolumeError(f"{path}: unknown ElementType '{element}'.")
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    expected = math.prod(dims) * _MET_BYTES[element] * channels
    if expected > MAX_VOXEL_BYTES:
        raise VolumeError(f"{path}: the header declares {expected / 1024**3:.1f} GiB of voxels, more than the "
                          f"{MAX_VOXEL_BYTES / 1024**3:.0f} GiB this tool reads.")
    check_data_sizes(path, metaimage_data_files(path, fields, dims, _MET_BYTES[element] * channels))


def mha_header_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    end = head.find(b"ElementDataFile")
    if end < 0:
        return head[:4096]
    stop = head.find(b"\n", end)
    return head[: stop if stop >= 0 else len(head)]


def itk_reason(exc: BaseException) -> str:
    """The useful last line of an ITK exception, without the C++ file and line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.lower().startswith("description:"):
            return line.split(":", 1)[1].strip()
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^.*?\.(cxx|h|hxx|cpp):\d+:\s*", "", text)
    return text[:200]


def printable(value: str) -> bool:
    """A metadata value worth keeping: short and printable."""
    return len(value) < 4096 and value.isprintable()
