"""Real DICOM series for the DICOM tests, written with pydicom from real volumes.

:func:`write_ct_series` writes a volume as a CT Image Storage series (one file per slice) with
everything a PACS and a SEG need: patient/study/series/frame-of-reference identity, per-slice
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness and rescale
slope/intercept (stored unsigned: HU + 1024). :func:`write_dicom_series` writes an array as an
axial MR series and :func:`write_tilted_series` a CT series tilted in-plane, both with SimpleITK.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from clara_napari.core.volume import Volume


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as close to ``value`` as that allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def write_ct_series(volume: Volume, folder: Path, *, patient_id: str = "CLARA-TEST-1", modality: str = "CT",
                    study_uid: str | None = None, series_uid: str | None = None) -> dict[str, str]:
    """Write ``volume`` (z, y, x, Hounsfield units) as a DICOM series; returns its UIDs."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    d = volume.direction_matrix
    spacing = volume.spacing
    origin = np.asarray(volume.origin)
    intercept = -1024.0 if modality == "CT" else 0.0
    stored = np.round(volume.array.astype(np.float64) - intercept)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("the volume does not fit unsigned 16-bit storage")
    stored = stored.astype(np.uint16)
    for k in range(volume.array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = "A0001"
        ds.Modality = modality
        ds.Manufacturer = "clara-napari tests"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "clara-napari DICOM test study"
        ds.SeriesDescription = f"{volume.name} as a DICOM series"
        ds.PatientName = "Test^Clara"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.Laterality = ""
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientOrientation = ""
        position = origin + d @ np.array([0.0, 0.0, k * spacing[2]])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
        ds.SliceLocation = _ds(position[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]   # row spacing (y), then column spacing (x)
        ds.SliceThickness = _ds(spacing[2])
        ds.KVP = "120" if modality == "CT" else None
        if modality == "MR":
            del ds.KVP
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = "3"
            ds.EchoTrainLength = "1"
            ds.RepetitionTime = "10"
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.array.shape[1]), int(volume.array.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        pydicom.dcmwrite(folder / f"IM{k + 1:04d}.dcm", ds, enforce_file_format=True)
    return {"study": study_uid, "series": series_uid, "frame_of_reference": frame_uid}


def write_dicom_series(folder: Path, series_uid: str, array: np.ndarray, spacing=(0.7, 0.8, 2.5),
                       origin=(-10.0, 20.0, 30.0), prefix: str = "slice") -> None:
    """Write ``array`` (z, y, x) int16 as one DICOM file per slice, with the tags a reader sorts by."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(array):
        image = sitk.GetImageFromArray(plane.astype(np.int16))
        image.SetSpacing(spacing[:2])
        position = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": f"{series_uid}.0",
            "0020|000e": series_uid,
            "0020|0032": "\\".join(repr(float(v)) for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",  # row spacing (y) then column spacing (x)
            "0018|0050": str(spacing[2]),
            "0020|0013": str(k + 1),
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(image)


SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)   # a permutation with flips (sagittal acquisition)


def write_tilted_series(folder: Path, *, shape=(6, 7, 8), spacing=(0.7, 0.8, 2.5), origin=(-90.5, -120.25, 33.0),
                       row=(0.9659258262890683, 0.25881904510252074, 0.0),
                       col=(-0.25881904510252074, 0.9659258262890683, 0.0)) -> Path:
    """A CT-like DICOM series (one file per slice) written with SimpleITK, tilted in-plane by 15 degrees."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    array = rng.integers(-1000, 2000, size=shape).astype(np.int16)
    normal = np.cross(row, col)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(shape[0]):
        image = sitk.GetImageFromArray(array[z:z + 1])
        image.SetSpacing(spacing)
        position = np.asarray(origin) + z * spacing[2] * normal
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{z + 1}", "0020|000d": "1.2.826.0.1.3680043.2.1125.1.42",
            "0020|000e": series_uid, "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.10f}" for v in (*row, *col)),
            "0018|0050": str(spacing[2]), "0028|1053": "1", "0028|1052": "0",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(image)
    return folder
