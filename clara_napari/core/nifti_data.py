"""NIfTI files checked on their STORED bytes, before SimpleITK reads (and rewrites) them.

ITK's NIfTI reader turns NaN voxels into 0 and ignores a non-finite ``scl_slope`` /
``scl_inter``, so the finite check on what it returns comes too late: an all-NaN file would be
"segmented". Here the header and the raw data block are read with numpy alone: the single-file
magic (``n+1`` / ``n+2``; a ``.hdr``/``.img`` pair is not an accepted input), finite scaling, the
data block present whole from ``vox_offset``, and every stored float finite. A gzip stream is
decompressed whole (a truncated or corrupt one is refused) in the same pass.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import VolumeError

#: NIfTI datatype code → numpy kind of each stored number (only the float ones can hold NaN).
_FLOAT_CODES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}   # float32, float64, complex64, complex128 (as pairs)
_FLOAT_BITS = {16: 32, 64: 64, 32: 64, 1792: 128}
_UNSUPPORTED = {1536: "float128", 2048: "complex256"}
_CHUNK = 8 << 20


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI whose header, scaling or stored voxels would turn into a wrong volume."""
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            _check_stream(path, stream, compressed)
    except (OSError, EOFError, zlib.error) as exc:
        if compressed:
            raise VolumeError(f"{path}: the gzip data is corrupt or truncated ({exc}).") from None
        raise VolumeError(f"{path}: cannot read the file ({exc}).") from None


def _check_stream(path: Path, stream, compressed: bool) -> None:
    head = _read_exactly(stream, 540)
    header = _parse_header(path, head)
    if header is None:
        return   # not a NIfTI header: the reader refuses it with its own message
    datatype, bitpix, dims, vox_offset, slope, inter = header
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise VolumeError(f"{path}: the NIfTI scaling scl_slope={slope} scl_inter={inter} is not finite.")
    if datatype in _UNSUPPORTED:
        raise VolumeError(f"{path}: NIfTI datatype {_UNSUPPORTED[datatype]} is not supported.")
    kind = _FLOAT_CODES.get(datatype)
    dtype = None if kind is None else np.dtype(("<" if _little(head) else ">") + kind)
    if dtype is not None and bitpix != _FLOAT_BITS[datatype]:
        raise VolumeError(f"{path}: NIfTI bitpix {bitpix} disagrees with its float datatype {datatype}.")
    need = math.prod(dims) * max(bitpix, 0) // 8
    buffered = head[vox_offset:] if vox_offset < len(head) else b""
    if vox_offset > len(head):
        _skip(stream, vox_offset - len(head))

    def pieces():
        first = buffered[:need]
        if first:
            yield first
        left = need - len(first)
        while left > 0:
            chunk = stream.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    got, bad, rest = 0, 0, b""
    for piece in pieces():
        got += len(piece)
        if dtype is not None:
            data = rest + piece if rest else piece
            usable = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            rest = data[usable:]
    if got < need:
        raise VolumeError(f"{path}: the file holds {got} bytes of voxels from vox_offset {vox_offset}, fewer than the "
                          f"{need} its header declares; it is truncated.")
    if compressed:
        while stream.read(_CHUNK):   # to the end: gzip checks its CRC and length there
            pass
    if bad:
        raise VolumeError(f"{path}: {bad} stored voxels are not finite (NaN or infinite).")


def _read_exactly(stream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _skip(stream, count: int) -> None:
    while count > 0:
        chunk = stream.read(min(count, _CHUNK))
        if not chunk:
            return
        count -= len(chunk)


def _little(head: bytes) -> bool:
    return struct.unpack("<i", head[:4])[0] in (348, 540)


def _parse_header(path: Path, head: bytes):
    """(datatype, bitpix, dims, vox_offset, scl_slope, scl_inter), or None when not NIfTI at all."""
    if len(head) < 348:
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            magic = head[344:348]
            if magic == b"ni1\x00":
                raise VolumeError(f"{path}: the NIfTI header says its voxels are in a separate .img file; header/image "
                                  "pairs are not accepted, use a single .nii file.")
            if magic != b"n+1\x00":
                return None
            ndim = struct.unpack(order + "h", head[40:42])[0]
            if not 1 <= ndim <= 7:
                return None
            dims = struct.unpack(order + "7h", head[42:56])[:ndim]
            datatype, bitpix = struct.unpack(order + "hh", head[70:74])
            vox_offset = struct.unpack(order + "f", head[108:112])[0]
            slope, inter = struct.unpack(order + "ff", head[112:120])
            if not math.isfinite(vox_offset) or vox_offset < 348 or vox_offset != int(vox_offset):
                raise VolumeError(f"{path}: NIfTI vox_offset {vox_offset} is not a whole offset past the header.")
            return datatype, bitpix, [max(d, 0) for d in dims], int(vox_offset), slope, inter
        if size == 540:
            if len(head) < 540:
                return None
            magic = head[4:12]
            if magic[:4] == b"ni2\x00":
                raise VolumeError(f"{path}: the NIfTI header says its voxels are in a separate .img file; header/image "
                                  "pairs are not accepted, use a single .nii file.")
            if magic[:4] != b"n+2\x00":
                return None
            datatype, bitpix = struct.unpack(order + "hh", head[12:16])
            dim = struct.unpack(order + "8q", head[16:80])
            ndim = dim[0]
            if not 1 <= ndim <= 7:
                return None
            vox_offset = struct.unpack(order + "q", head[168:176])[0]
            slope, inter = struct.unpack(order + "dd", head[176:192])
            if vox_offset < 540:
                raise VolumeError(f"{path}: NIfTI vox_offset {vox_offset} lies inside the header.")
            return datatype, bitpix, [max(d, 0) for d in dim[1:ndim + 1]], vox_offset, slope, inter
    return None
