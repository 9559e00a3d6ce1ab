"""Volumes: one type for every format, read and written with SimpleITK.

A :class:`Volume` holds the voxels in (z, y, x) order — what SimpleITK's ``GetArrayFromImage``
and napari use — and the geometry in SimpleITK's (x, y, z) conventions: ``spacing`` and
``origin`` are 3-tuples, ``direction`` the 3x3 direction cosines flattened row by row.
Geometry is carried as the exact Python floats SimpleITK gave, so it survives every
read/write bit for bit (MetaImage headers are written with 17 significant digits).
What a file's header declares is checked before any voxel is read (:mod:`.volume_headers`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import commit, staging_dir
from .errors import VolumeError
from .input_files import (
    check_data_sizes,
    check_input_path,
    check_series_files,
    input_folder,
    nrrd_data_files,
    split_total,
)
from .nifti_data import check_nifti
from .volume_headers import (
    VolumeHeader,
    check_gzip,
    check_information,
    check_inline_data,
    check_metaimage_header,
    itk_reason,
    printable,
)

#: File name endings read as one volume each (longest first so ``.nii.gz`` wins over ``.gz``).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
#: What :func:`write_volume` writes.
WRITE_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii", ".nrrd")
#: The one SimpleITK reader each file ending is read with (never guessed from the content).
IMAGE_IO = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mhd": "MetaImageIO", ".mha": "MetaImageIO",
            ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}
@dataclasses.dataclass(eq=False)
class Volume:
    """Voxels in (z, y, x) order plus SimpleITK (x, y, z) geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: Path | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        spacing = tuple(float(v) for v in self.spacing)
        origin = tuple(float(v) for v in self.origin)
        self.direction = tuple(float(v) for v in self.direction)
        if self.array.ndim not in (3, 4) or len(spacing) != 3 or len(origin) != 3 or len(self.direction) != 9:
            raise VolumeError(f"{self.name}: a volume needs a 3D array (z, y, x[, c]) and 3D geometry, got {self.array.shape}.")
        self.spacing, self.origin = spacing, origin

    # -- geometry ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The source file name without its volume extension (``ct.nii.gz`` → ``ct``)."""
        return volume_stem(self.path) if self.path is not None else "volume"

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxel counts in SimpleITK's (x, y, z) order."""
        z, y, x = self.array.shape[:3]
        return (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def is_oblique(self) -> bool:
        """True when the axes are not a permutation/flip of the world axes."""
        d = np.abs(self.direction_matrix)
        return not np.allclose(np.sort(d, axis=0)[:-1], 0.0, atol=1e-6)

    def geometry(self) -> dict[str, tuple[float, ...]]:
        return {"spacing": self.spacing, "origin": self.origin, "direction": self.direction}

    def same_grid(self, other: Volume) -> bool:
        """Same size, spacing, origin and direction, exactly."""
        return self.size == other.size and self.geometry() == other.geometry()

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A new volume with this one's geometry (and path/metadata) and another array."""
        return dataclasses.replace(self, array=array, metadata=dict(self.metadata), **changes)

    def physical_volume_ml(self, mask: np.ndarray | None = None) -> float:
        """Volume in millilitres of the non-zero voxels of ``mask`` (default: this array)."""
        voxels = np.count_nonzero(self.array if mask is None else mask)
        return voxels * math.prod(self.spacing) / 1000.0

    # -- SimpleITK --------------------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:  # SimpleITK has no half floats
            array = array.astype(np.float32)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 4)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image, path: Path | None = None, metadata: dict[str, str] | None = None) -> Volume:
        import SimpleITK as sitk

        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            path=None if path is None else Path(path),
            metadata=dict(metadata or {}),
        )


def volume_stem(path: Path | str) -> str:
    """File name without the volume extension; a DICOM folder keeps its name."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_stem(stem: str) -> str:
    """An output name that cannot leave the output folder or hide itself."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.+") else "_" for c in stem).lstrip(".")
    return cleaned or "volume"


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


# -- reading ---------------------------------------------------------------------------------
def read_volume(path: str | Path, *, allow_channels: bool = False,
                before_voxels: Callable[[VolumeHeader], object] | None = None) -> Volume:
    """Read a NIfTI, MetaImage, NRRD file or a folder holding one DICOM series.

    Refuses (with :class:`VolumeError` naming the file) empty, unreadable or malformed files,
    2D and 4D+ images (multi-component voxels only with ``allow_channels``), sizes that would
    not fit in memory, and non-finite voxels. ``before_voxels`` is called with the header's
    :class:`~clara_napari.core.volume_headers.VolumeHeader` before any voxel is read (a DICOM series:
    right after reading), e.g. to refuse a run that would not fit in memory.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder.")
    check_input_path(path)
    if path.is_dir():
        volume = _read_dicom_series(path, allow_channels=allow_channels)
        if before_voxels is not None:
            before_voxels(VolumeHeader(path, volume.size, volume.spacing, volume.origin, volume.direction,
                                       volume.array.itemsize * (volume.array.shape[3] if volume.array.ndim == 4 else 1)))
        return volume
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise VolumeError(f"{path}: not a supported volume format (expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder).")
    try:
        if path.stat().st_size == 0:
            raise VolumeError(f"{path}: the file is empty.")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise VolumeError(f"{path}: permission denied.") from None
    if path.suffix.lower() in (".mhd", ".mha"):
        check_metaimage_header(path)
    detached = nrrd_data_files(path) if path.suffix.lower() in (".nrrd", ".nhdr") else None
    reader = sitk.ImageFileReader()
    reader.SetImageIO(next(io for suffix, io in IMAGE_IO.items() if path.name.lower().endswith(suffix)))
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"{path}: cannot read the header ({itk_reason(exc)}).") from None
    total = check_information(path, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(),
                               reader.GetPixelID(), allow_channels)
    check_inline_data(path, total)
    if detached:
        check_data_sizes(path, split_total(path, detached, total))
    if before_voxels is not None:
        size = tuple(reader.GetSize())
        before_voxels(VolumeHeader(path, size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(),
                                   total // max(math.prod(size), 1)))
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti(path)   # stored bytes: ITK turns NaN into 0 and ignores non-finite scaling
    elif path.name.lower().endswith(".gz"):
        check_gzip(path, total)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{path}: cannot read the voxels ({itk_reason(exc)}).") from None
    metadata = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if printable(image.GetMetaData(k))}
    return _finish(Volume.from_sitk(image, path, metadata))


def _read_dicom_series(folder: Path, *, allow_channels: bool) -> Volume:
    import SimpleITK as sitk

    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise VolumeError(f"{folder}: cannot scan the folder for DICOM files ({itk_reason(exc)}).") from None
    if not series:
        raise VolumeError(f"{folder}: the folder holds no DICOM series.")
    if len(series) > 1:
        listed = ", ".join(f"{sid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))} files)" for sid in series)
        raise VolumeError(f"{folder}: the folder holds {len(series)} DICOM series, choose one: {listed}.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    check_series_files(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{folder}: cannot read the DICOM series ({itk_reason(exc)}).") from None
    check_information(folder, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(),
                       image.GetPixelID(), allow_channels)
    metadata = {}
    if reader.GetMetaDataKeys(0):
        metadata = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0) if printable(reader.GetMetaData(0, k))}
    metadata["dicom_series_uid"] = series[0]
    return _finish(Volume.from_sitk(image, folder, metadata))


def _finish(volume: Volume) -> Volume:
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"{volume.path}: {bad} voxels are not finite (NaN or infinite).")
    return volume


# -- writing ---------------------------------------------------------------------------------
def write_volume(volume: Volume, path: str | Path, *, compress: bool = False, overwrite: bool = True,
                 forbid: Iterable[Path] = ()) -> Path:
    """Write ``volume`` to ``path`` (``.mhd`` + ``.raw``, ``.mha``, ``.nii[.gz]`` or ``.nrrd``).

    Files are written under a temporary folder beside the target and renamed into place, data
    file before header, so no partial file is ever visible. ``forbid`` lists paths that must never
    be written (the inputs); the volume's own source path is always among them.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise VolumeError(f"{path}: cannot write this format (use one of {', '.join(WRITE_SUFFIXES)}).")
    names = [path.name]
    if path.suffix.lower() == ".mhd":
        names.insert(0, path.name[:-4] + (".zraw" if compress else ".raw"))
    protected = {Path(p).resolve() for p in forbid}
    if volume.path is not None:
        protected.add(Path(volume.path).resolve())
    for name in names:
        target = (path.parent / name).resolve()
        if target in protected:
            raise VolumeError(f"{path}: refusing to write over the input file {target}.")
        if target.is_dir():
            raise VolumeError(f"{path.parent / name}: is a folder; refusing to write over it.")
        if target.exists() and not overwrite:
            raise VolumeError(f"{path.parent / name}: exists already (use --overwrite to replace it).")
    try:
        with staging_dir(path.parent) as staging:
            sitk.WriteImage(volume.to_sitk(), str(staging / path.name), compress)
            return commit(staging, path.parent, names, overwrite=overwrite)[-1]
    except RuntimeError as exc:
        raise VolumeError(f"{path}: cannot write ({itk_reason(exc)}).") from None
    except OSError as exc:
        raise VolumeError(f"{path}: cannot write ({exc.strerror or exc}).") from None


def find_volumes(folder: str | Path) -> list[Path]:
    """Volumes in ``folder``, sorted: supported files, and sub-folders holding DICOM files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{folder}: the input folder does not exist.")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_volume_file(entry) or entry.is_dir() and looks_like_dicom_folder(entry):
            found.append(entry)
    return found


def looks_like_dicom_folder(folder: Path) -> bool:
    inside = Path(folder).resolve()
    for entry in folder.iterdir():
        if entry.is_file() and input_folder(entry.resolve()) == inside:   # never peek at a file outside
            if entry.suffix.lower() == ".dcm":
                return True
            try:
                with open(entry, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def check_voxels(volume: Volume) -> Volume:
    """The voxel checks every reader applies (non-finite voxels…), for a volume made in memory.

    Raises :class:`VolumeError` naming the volume's file, or "the in-memory volume"; returns the
    volume unchanged.
    """
    if volume.array.dtype.kind not in "biuf":
        raise VolumeError(f"{volume.path or 'the in-memory volume'}: the voxels are of type {volume.array.dtype}, "
                          "not numbers.")
    if volume.path is None:
        _finish(dataclasses.replace(volume, path=Path("the in-memory volume")))
        return volume
    return _finish(volume)
