"""The files an input may make the readers open, checked before any reader opens them.

The rule, for every format: no input can make the tool open a file outside *the input's
folder*, and a data file that cannot be read whole is an error, never garbage.

*The input's folder* is the folder that holds the input file (the file's parent as given,
with symlinks resolved), or the DICOM series folder itself. So, with ``--input`` a single file,
its data files must lie in the folder of that file (or below it); with ``--input`` a folder,
each volume found there is checked against that same folder (each DICOM series against its own
sub-folder). Symlinks are followed and the resolved path decides: a symlink that resolves inside
the folder is fine, one that leaves it is refused. Hard links cannot be told apart from the file
they link and are accepted (the kernel's ``protected_hardlinks`` rule keeps foreign files out).

Every referenced data file must exist, be a regular file (not a FIFO or a device, which would
hang or never end), lie inside the folder and hold exactly the bytes the header declares
(compressed streams are decompressed whole and counted).
"""
from __future__ import annotations

import bz2
import gzip
import math
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import VolumeError

#: Largest text header read (a MetaImage or NRRD header listing thousands of slice files stays far below).
MAX_HEADER_BYTES = 16 * 1024**2
#: Most data files one header may name.
MAX_DATA_FILES = 100_000

_PATTERN = re.compile(r"^[^%]*%0?\d{0,2}d[^%]*$")   # one integer conversion (%d, %03d), nothing else


@dataclass(frozen=True)
class DataFile:
    """One file holding (part of) the voxels, as the reader will open it."""

    path: Path            # resolved, inside the input's folder, a regular file
    name: str             # as the header wrote it (for messages)
    encoding: str = "raw"  # raw | zlib | gzip | bzip2 | text (not size-checked: the parser fails on short text)
    skip: int = 0         # bytes before the data (-1: the data are the file's last bytes)
    line_skip: int = 0    # NRRD "line skip": lines before the data


def input_folder(path: Path) -> Path:
    """The folder an input may read from: the series folder itself, else the file's folder."""
    path = Path(path)
    return path.resolve() if path.is_dir() else path.parent.resolve()


def _inside(target: Path, folder: Path) -> bool:
    return target == folder or folder in target.parents


def check_input_path(path: Path) -> None:
    """The input itself must resolve inside the folder that holds it; a file must be a regular file.

    So a volume or DICOM series folder found in an input folder cannot be a link to elsewhere.
    For a DICOM folder every entry is then checked the same way before any DICOM scanner opens it.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))   # ".." folded as written, symlinks kept
    folder = absolute.parent.resolve()
    target = absolute.resolve()
    if not _inside(target, folder):
        raise VolumeError(f"{path}: is a symlink to {target}, outside the input's folder; refused.")
    if path.is_dir():
        check_series_folder(path)
        return
    if not _regular(target):
        raise VolumeError(f"{path}: is not a regular file; refused.")


def check_series_folder(folder: Path) -> None:
    """Every entry of a DICOM series folder stays inside it and is a regular file or a folder."""
    resolved = Path(folder).resolve()
    for entry in sorted(Path(folder).iterdir()):
        if entry.name.startswith("."):
            continue
        target = entry.resolve()
        if not _inside(target, resolved):
            raise VolumeError(f"{folder}: the entry '{entry.name}' is a symlink to {target}, outside the series "
                              "folder; refused.")
        if not (target.is_dir() or _regular(target)):
            raise VolumeError(f"{folder}: the entry '{entry.name}' is not a regular file; refused.")


def check_series_files(folder: Path, files) -> None:
    """The files a DICOM scanner chose all lie inside the series folder."""
    resolved = Path(folder).resolve()
    for name in files:
        target = Path(name).resolve()
        if not _inside(target, resolved) or not _regular(target):
            raise VolumeError(f"{folder}: the DICOM series names '{name}', which is not a regular file inside the "
                              "series folder; refused.")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def data_file(header: Path, name: str, *, what: str, encoding: str = "raw", skip: int = 0,
              line_skip: int = 0) -> DataFile:
    """Check one name a header gives for its data: relative, inside the folder, a regular file."""
    folder = header.parent.resolve()
    if not name or "\0" in name:
        raise VolumeError(f"{header}: {what} names an empty data file; refused.")
    if Path(name).is_absolute():
        raise VolumeError(f"{header}: {what} '{name}' is an absolute path, outside the header's folder; refused.")
    target = (folder / name).resolve()
    if not _inside(target, folder) or target == folder:
        raise VolumeError(f"{header}: {what} '{name}' points outside the header's folder; refused.")
    if not target.exists():
        raise VolumeError(f"{header}: the data file '{name}' named by {what} is missing.")
    if not _regular(target):
        raise VolumeError(f"{header}: the data file '{name}' named by {what} is not a regular file; refused.")
    if not os.access(target, os.R_OK):
        raise VolumeError(f"{header}: the data file '{name}' named by {what}: permission denied.")
    return DataFile(target, name, encoding, skip, line_skip)


def read_header_text(path: Path) -> str:
    """A text header (``.mhd``/``.nhdr``) whole; refuses binary or oversized files."""
    size = path.stat().st_size
    if size > MAX_HEADER_BYTES:
        raise VolumeError(f"{path}: the header file is {size} bytes, more than the {MAX_HEADER_BYTES} a header may "
                          "hold; refused.")
    try:
        return path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise VolumeError(f"{path}: the header is not plain text; refused.") from None


def expand_pattern(header: Path, words: list[str], *, what: str) -> list[str]:
    """``name%03d.raw first last step`` → the file names, for a plain integer pattern only.

    Only one ``%d``-style conversion is accepted: the readers hand the pattern to C's
    ``sprintf``, where ``%s`` or ``%n`` would read or write the reader's memory.
    """
    fmt = words[0]
    if not _PATTERN.match(fmt):
        raise VolumeError(f"{header}: {what} pattern '{fmt}' must hold exactly one integer conversion such as %03d; "
                          "refused.")
    try:
        first, last, step = (int(w) for w in words[1:4])
    except ValueError:
        raise VolumeError(f"{header}: {what} '{' '.join(words)}' must read 'pattern first last step' with whole "
                          "numbers.") from None
    if step == 0 or (last - first) * step < 0:
        raise VolumeError(f"{header}: {what} '{' '.join(words)}' does not count from first to last by step.")
    count = (last - first) // step + 1
    if count > MAX_DATA_FILES:
        raise VolumeError(f"{header}: {what} names {count} files, more than the {MAX_DATA_FILES} accepted.")
    return [fmt % (first + i * step) for i in range(count)]


# -- MetaImage ---------------------------------------------------------------------------------
def metaimage_data_files(header: Path, fields: dict[str, str], dims: list[int], element_bytes: int) -> list[tuple[DataFile, int]]:
    """Every data file of a MetaImage header with the bytes each must hold (before ITK reads any).

    ``ElementDataFile`` forms: ``LOCAL`` (data after the header), a file name, ``LIST [nD]``
    (one name per line after the header line) and ``pattern first last step``.
    """
    value = fields["ElementDataFile"]
    compressed = fields.get("CompressedData", "False").strip().lower() == "true"
    encoding = "zlib" if compressed else "raw"
    try:
        skip = int(fields.get("HeaderSize", "0") or 0)
    except ValueError:
        raise VolumeError(f"{header}: HeaderSize '{fields['HeaderSize']}' is not a whole number.") from None
    if skip < -1:
        raise VolumeError(f"{header}: HeaderSize {skip} is negative.")
    total = math.prod(dims) * element_bytes
    if value == "LOCAL":
        offset = _metaimage_data_offset(header)
        return [(DataFile(header.resolve(), header.name, encoding, offset + max(skip, 0)), total)]
    words = value.split()
    if words and words[0] == "LIST" or (words and "%" in words[0]):
        if compressed:
            raise VolumeError(f"{header}: compressed data split over several files (ElementDataFile '{value}') are "
                              "not supported.")
        if words[0] == "LIST":
            file_dims = len(dims) - 1
            if len(words) > 1:
                match = re.fullmatch(r"(\d)D?", words[1])
                if not match or not 1 <= int(match.group(1)) <= len(dims):
                    raise VolumeError(f"{header}: ElementDataFile '{value}': the file dimension must be 1D..{len(dims)}D.")
                file_dims = int(match.group(1))
            names = _list_after(header, "ElementDataFile")
        else:
            file_dims = len(dims) - 1
            if len(words) != 4:
                raise VolumeError(f"{header}: ElementDataFile '{value}' must read 'pattern first last step'.")
            names = expand_pattern(header, words, what="ElementDataFile")
        needed = math.prod(dims[file_dims:])
        if len(names) != needed:
            raise VolumeError(f"{header}: ElementDataFile '{words[0]}' names {len(names)} files; the header's DimSize "
                              f"needs exactly {needed}.")
        each = math.prod(dims[:file_dims]) * element_bytes
        return [(data_file(header, n, what="ElementDataFile", skip=skip), each) for n in names]
    return [(data_file(header, value, what="ElementDataFile", encoding=encoding, skip=skip), total)]


def _metaimage_data_offset(header: Path) -> int:
    with open(header, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    at = head.find(b"ElementDataFile")
    end = head.find(b"\n", at)
    if at < 0 or end < 0:
        raise VolumeError(f"{header}: the ElementDataFile line does not end; the header is truncated.")
    return end + 1


def _list_after(header: Path, key: str) -> list[str]:
    """The non-empty lines after the line starting with ``key`` (a LIST of data files)."""
    text = read_header_text(header) if header.suffix.lower() != ".mha" else _mha_text(header)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*{re.escape(key)}\s*[=:]", line, re.IGNORECASE):
            names = [ln.strip() for ln in lines[i + 1:] if ln.strip()]
            if len(names) > MAX_DATA_FILES:
                raise VolumeError(f"{header}: the LIST names {len(names)} files, more than the {MAX_DATA_FILES} accepted.")
            for name in names:
                if any(c.isspace() for c in name):
                    raise VolumeError(f"{header}: the LIST entry '{name}' holds blanks; refused.")
            return names
    return []


def _mha_text(header: Path) -> str:
    with open(header, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    try:
        return head.decode("ascii")
    except UnicodeDecodeError as exc:   # a LIST .mha has no binary part; anything else is not a header
        return head[:exc.start].decode("ascii")


# -- NRRD ----------------------------------------------------------------------------------------
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                   "ascii": "text", "text": "text", "txt": "text", "hex": "text"}


def nrrd_data_files(header: Path) -> list[DataFile] | None:
    """The detached data files of a NRRD header (``data file:``), or None when the data are attached."""
    with open(header, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    if not head.startswith(b"NRRD"):
        return None   # not a NRRD header: the reader refuses it
    blank = re.search(rb"\r?\n\r?\n", head)
    text = head[: blank.start() if blank else len(head)].decode("latin-1")
    fields: dict[str, str] = {}
    lines = text.splitlines()
    data_line = None
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        fields[key] = value.strip()
        if key in ("data file", "datafile"):
            data_line = i
            break
    if data_line is None:
        return None
    if header.name.lower().endswith(".nrrd") and blank is None:
        pass   # a detached header in a .nrrd: the list runs to the end of the file
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "raw").lower())
    if encoding is None:
        raise VolumeError(f"{header}: unknown NRRD encoding '{fields.get('encoding')}'.")
    try:
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")) or 0)
    except ValueError:
        raise VolumeError(f"{header}: 'byte skip' / 'line skip' must be whole numbers.") from None
    if skip < -1 or line_skip < 0:
        raise VolumeError(f"{header}: 'byte skip' {skip} / 'line skip' {line_skip} are negative.")
    what = "'data file'"
    value = fields.get("data file", fields.get("datafile", ""))
    words = value.split()
    if words and words[0] == "LIST":
        if len(words) > 2:
            raise VolumeError(f"{header}: {what} '{value}' must read 'LIST [subdim]'.")
        names = [ln.strip() for ln in head.decode("latin-1").splitlines()[data_line + 1:] if ln.strip()]
        if len(names) > MAX_DATA_FILES:
            raise VolumeError(f"{header}: the LIST names {len(names)} files, more than the {MAX_DATA_FILES} accepted.")
    elif "%" in value and len(words) in (4, 5):
        names = expand_pattern(header, words, what=what)
    else:
        names = [value]
    if not names:
        raise VolumeError(f"{header}: {what} is LIST but no file names follow.")
    return [data_file(header, n, what=what, encoding=encoding, skip=skip, line_skip=line_skip) for n in names]


# -- sizes ---------------------------------------------------------------------------------------
def check_data_sizes(header: Path, files: list[tuple[DataFile, int]]) -> None:
    """Each data file holds its bytes whole: raw files exactly, compressed streams decompressed whole."""
    for item, expected in files:
        label = "the inline data" if item.path == header.resolve() else f"the data file '{item.name}'"
        if item.encoding == "raw":
            size = item.path.stat().st_size
            if item.skip == -1 or item.line_skip:
                have = size if item.skip == -1 else size - item.skip
                ok = have >= expected   # data at the end / after text lines: at least the voxels
            else:
                have = size - item.skip
                ok = have == expected
            if not ok:
                state = "it is truncated" if have < expected else "the header does not describe it"
                raise VolumeError(f"{header}: {label} holds {max(have, 0)} bytes of voxels, the header declares "
                                  f"{expected}; {state}.")
        elif item.encoding in ("zlib", "gzip", "bzip2"):
            size = _decompressed_size(header, item, label)
            if size != expected:
                state = "they are truncated" if size < expected else "the header does not describe them"
                raise VolumeError(f"{header}: the compressed data in {label[4:]} hold {size} bytes, the header "
                                  f"declares {expected}; {state}.")


def _decompressed_size(header: Path, item: DataFile, label: str) -> int:
    size = 0
    try:
        with open(item.path, "rb") as raw:
            raw.seek(max(item.skip, 0))
            if item.encoding == "zlib":
                inflater = zlib.decompressobj()
                while chunk := raw.read(8 << 20):
                    size += len(inflater.decompress(chunk))
                    if inflater.eof:
                        break
                size += len(inflater.flush())
                if not inflater.eof:
                    raise VolumeError(f"{header}: the compressed data in {label[4:]} end early; they are truncated.")
                return size
            stream = gzip.GzipFile(fileobj=raw) if item.encoding == "gzip" else bz2.BZ2File(raw)
            with stream:
                while chunk := stream.read(8 << 20):
                    size += len(chunk)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(f"{header}: the compressed data in {label[4:]} are corrupt or truncated ({exc}).") from None
    return size


def split_total(header: Path, files: list[DataFile], total: int) -> list[tuple[DataFile, int]]:
    """NRRD: the declared voxel bytes shared evenly by the data files."""
    if total % len(files):
        raise VolumeError(f"{header}: {len(files)} data files cannot share the {total} bytes of voxels evenly.")
    return [(f, total // len(files)) for f in files]
