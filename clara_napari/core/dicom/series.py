"""The source instances of a DICOM series folder, in the order SimpleITK stacks them.

:func:`clara_napari.core.volume.read_volume` reads a series folder with SimpleITK's GDCM series
reader; slice ``k`` of that volume is file ``k`` of :func:`series_files`, which lists the files
the same way (the one series of the folder, sorted by GDCM along the slice normal).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DicomError
from ..volume import Volume, looks_like_dicom_folder

#: Refuse series with more instances than this (a hostile folder or PACS answer).
MAX_INSTANCES = 10000


def is_dicom_series(path: Path | str | None) -> bool:
    """True when ``path`` is a folder holding DICOM files (what ``read_volume`` reads as a series)."""
    if path is None:
        return False
    path = Path(path)
    try:
        return path.is_dir() and looks_like_dicom_folder(path)
    except OSError:
        return False


def series_files(folder: Path | str) -> list[Path]:
    """The files of the folder's one DICOM series, in SimpleITK's slice order."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not is_dicom_series(folder):
        raise DicomError(f"{folder}: not a DICOM series folder.")
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series = ()
    if len(series) != 1:
        raise DicomError(f"{folder}: the folder holds {len(series)} DICOM series; one is needed.")
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]
    if len(files) > MAX_INSTANCES:
        raise DicomError(f"{folder}: the series has {len(files)} instances, more than the {MAX_INSTANCES} read here.")
    for file in files:
        if folder.resolve() not in file.resolve().parents:
            raise DicomError(f"{file}: a series file outside the folder {folder}; refused.")
    return files


def source_datasets(volume: Volume) -> list:
    """The pydicom headers (no pixels) of the series ``volume`` was read from, slice ``k`` = dataset ``k``.

    Refuses a volume that is not on its series' grid (size, slice positions, orientation), so a
    SEG can never reference the wrong instances.
    """
    import pydicom

    folder = volume.path
    if folder is None or not is_dicom_series(folder):
        raise DicomError(f"{volume.name}: a DICOM SEG needs a DICOM series input (it references the source "
                         "instances); this volume was not read from a DICOM series folder.")
    files = series_files(folder)
    datasets = []
    for file in files:
        try:
            datasets.append(pydicom.dcmread(file, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for hostile files
            raise DicomError(f"{file}: cannot read the DICOM header ({type(exc).__name__}).") from exc
    check_on_grid(volume, datasets, folder)
    return datasets


def check_on_grid(volume: Volume, datasets: list, where: Path) -> None:
    """Each dataset ``k`` is slice ``k`` of ``volume`` (size, orientation and position within 0.01 mm)."""
    x, y, z = volume.size
    if len(datasets) != z:
        raise DicomError(f"{where}: the series has {len(datasets)} instances, the volume {z} slices.")
    direction = volume.direction_matrix
    spacing = np.asarray(volume.spacing)
    origin = np.asarray(volume.origin)
    for k, ds in enumerate(datasets):
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
            uids = (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                    str(ds.FrameOfReferenceUID))
        except (AttributeError, ValueError, TypeError):
            raise DicomError(f"{where}: instance {k + 1} lacks Rows, Columns, ImageOrientationPatient, "
                             "ImagePositionPatient or its UIDs; it cannot be referenced.") from None
        if (cols, rows) != (x, y) or not all(uids):
            raise DicomError(f"{where}: instance {k + 1} is {cols}x{rows}, the volume {x}x{y}.")
        if not np.allclose(iop, np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-4):
            raise DicomError(f"{where}: instance {k + 1} has another orientation than the volume.")
        expected = origin + direction @ (spacing * np.array([0.0, 0.0, k]))
        if not np.allclose(ipp, expected, atol=1e-2):
            raise DicomError(f"{where}: instance {k + 1} is not at slice {k} of the volume.")
