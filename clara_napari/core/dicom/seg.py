"""DICOM SEG out (highdicom) and back in (pydicom + numpy, an independent code path).

:func:`write_seg` writes a label volume read from a DICOM series as a Segmentation Storage
instance that references every source instance (study, series, SOP instances, frame of
reference, per-frame plane positions): one segment per label, binary by default (every frame
of every segment kept, so an empty label is a segment with no pixels set, as the standard
allows), or fractional (probabilities) for a single segment.

:func:`read_seg` reads a SEG back without highdicom: the frames are unpacked with numpy and
placed by their plane positions, onto a reference volume's grid or onto the grid the frames span.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_paths
from ..errors import DicomError, VolumeError
from ..volume import Volume
from .codes import SegmentInfo, hex_to_rgb
from .series import source_datasets

log = logging.getLogger(__name__)

SEG_SUFFIX = ".seg.dcm"
#: A SEG read without a reference may span at most this many slices / label voxels.
MAX_SLICES = 10000
MAX_LABEL_VOXELS = 4 * 1024**3
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def seg_path(folder: Path | str, stem: str) -> Path:
    return Path(folder) / f"{stem}{SEG_SUFFIX}"


def write_seg(labels: Volume, path: Path | str, segments: list[SegmentInfo], *, algorithm: str, version: str,
              model: str = "", fractional: bool = False, overwrite: bool = True, datasets: list | None = None) -> Path:
    """Write ``labels`` (on its source DICOM series' grid) as a DICOM SEG at ``path``, atomically.

    ``segments`` name the label values (segment ``i`` holds value ``segments[i-1].value``); with
    ``fractional`` the volume holds probabilities in [0, 1] of the one segment.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ... import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise VolumeError(f"{path}: exists already (use --overwrite to replace it).")
    if path.is_dir():
        raise VolumeError(f"{path}: is a folder; refusing to write over it.")
    sources = datasets if datasets is not None else source_datasets(labels)
    if not segments:
        raise DicomError(f"{path}: the app names no labels and the result holds none; a SEG needs a segment.")
    array = labels.array
    if fractional:
        if len(segments) != 1:
            raise DicomError(f"{path}: a fractional SEG holds one segment, the app has {len(segments)} labels.")
        values = np.asarray(array, dtype=np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DicomError(f"{path}: a fractional SEG needs probabilities in [0, 1].")
        pixels: np.ndarray = values
    else:
        if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
            raise DicomError(f"{path}: a binary SEG needs whole-number labels, the result holds {array.dtype}.")
        found = {int(v) for v in np.unique(array) if v != 0}
        known = {s.value for s in segments}
        if found - known:
            raise DicomError(f"{path}: the labels hold values {sorted(found - known)} that no segment names.")
        # segment numbers 1..N in label-value order: a lookup from label value to segment number
        lookup = np.zeros(int(max(known | found)) + 1, dtype=np.uint16)
        for number, info in enumerate(segments, start=1):
            lookup[info.value] = number
        pixels = lookup[array.astype(np.int64)]
        pixels = pixels.astype(np.uint8 if len(segments) < 256 else np.uint16)
    family = codes.cid7162.ArtificialIntelligence
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=_lo(algorithm), family=family, version=_lo(version),
        parameters={"model": _lo(model)} if model else None)
    descriptions = []
    for number, info in enumerate(segments, start=1):
        category = hd.sr.CodedConcept(*info.category)
        kind = hd.sr.CodedConcept(*info.type)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_lo(info.name), segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            display_color=hd.color.CIELabColor.from_rgb(*hex_to_rgb(info.color))))
    first = sources[0]
    series_number = int(getattr(first, "SeriesNumber", 0) or 0) % 100000 + 1000
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels,
            segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
                               else hd.seg.SegmentationTypeValues.BINARY),
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="clara-napari",
            manufacturer_model_name=_lo(algorithm), software_versions=f"clara-napari {__version__}",
            device_serial_number="0", series_description=_lo(f"{algorithm} segmentation"),
            content_label="CLARA_SEG", content_description=_lo(f"{algorithm} ({model})" if model else algorithm),
            content_creator_name="clara-napari^", omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomError(f"{path}: highdicom refused the segmentation ({exc}).") from None
    try:
        with atomic_paths(path) as (temp,):
            seg.save_as(temp, enforce_file_format=True)
    except OSError as exc:
        raise VolumeError(f"{path}: cannot write ({exc.strerror or exc}).") from None
    log.info("%s: DICOM SEG with %d segments, %d frames", path, len(segments), int(seg.NumberOfFrames))
    return path


def _lo(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash or control characters."""
    return "".join(c for c in str(text) if c.isprintable() and c != "\\")[:64]


# -- reading (independent of highdicom) -------------------------------------------------------
@dataclass
class SegSegment:
    number: int
    label: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    color_lab: tuple[int, int, int] | None
    algorithm: str


@dataclass
class SegData:
    """A SEG read back: a label map (segment numbers) on a grid, and what each segment is."""

    labels: Volume
    segments: list[SegSegment]
    referenced_series: str
    study: str
    frame_of_reference: str
    fractional: bool = False


def _lab(value) -> tuple[int, int, int] | None:
    """A segment's RecommendedDisplayCIELabValue; None (no colour) unless it holds three values (the standard)."""
    lab = tuple(int(v) for v in value)
    if len(lab) != 3:
        return None
    return lab


def _code(item) -> tuple[str, str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _group(frame, shared, name: str):
    """A functional group of one frame: its own, else the shared one (the standard allows either)."""
    if name in frame:
        return getattr(frame, name)[0]
    return getattr(shared, name)[0]


def read_seg(path: Path | str, reference: Volume | None = None) -> SegData:
    """Read a DICOM SEG (binary or fractional, thresholded at half) into a label map of segment numbers.

    With ``reference`` (the source series as read by ``read_volume``) the frames are placed on its
    grid and the result has its geometry exactly; otherwise on the grid the frames span.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from exc
    if str(getattr(ds, "SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise DicomError(f"{path}: not a DICOM SEG (SOP class {getattr(ds, 'SOPClassUID', 'missing')}).")
    try:
        rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.NumberOfFrames)
        bits = int(ds.BitsAllocated)
        shared = ds.SharedFunctionalGroupsSequence[0]
        per_frame = ds.PerFrameFunctionalGroupsSequence
        iop = np.asarray([float(v) for v in _group(per_frame[0], shared, "PlaneOrientationSequence").ImageOrientationPatient])
        measures = _group(per_frame[0], shared, "PixelMeasuresSequence")
        row_spacing, col_spacing = (float(v) for v in measures.PixelSpacing)
        between = getattr(measures, "SpacingBetweenSlices", None) or getattr(measures, "SliceThickness", None)
        positions = np.asarray([[float(v) for v in _group(f, shared, "PlanePositionSequence").ImagePositionPatient]
                                for f in per_frame])
        numbers = [int(_group(f, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber) for f in per_frame]
        segments = []
        for item in ds.SegmentSequence:
            lab = _lab(item.RecommendedDisplayCIELabValue) if "RecommendedDisplayCIELabValue" in item else None
            algorithm = str(item.SegmentAlgorithmName) if "SegmentAlgorithmName" in item else ""
            segments.append(SegSegment(int(item.SegmentNumber), str(item.SegmentLabel),
                                       _code(item.SegmentedPropertyCategoryCodeSequence[0]),
                                       _code(item.SegmentedPropertyTypeCodeSequence[0]), lab, algorithm))
        referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        fractional = str(ds.SegmentationType) == "FRACTIONAL"
        raw = bytes(ds.PixelData)
    except (AttributeError, IndexError, ValueError, TypeError, KeyError):
        raise DicomError(f"{path}: the SEG lacks its frame geometry, segment identification or pixel data.") from None
    if len(per_frame) != frames or bits not in (1, 8):
        raise DicomError(f"{path}: {len(per_frame)} per-frame groups for {frames} frames ({bits}-bit); not a SEG read here.")
    if str(ds.file_meta.TransferSyntaxUID) not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        raise DicomError(f"{path}: compressed SEG pixel data ({ds.file_meta.TransferSyntaxUID}) are not read here.")
    count = rows * cols
    if bits == 1:
        flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    else:
        flat = np.frombuffer(raw, dtype=np.uint8)
    if flat.size < frames * count:
        raise DicomError(f"{path}: the pixel data hold {flat.size} values for {frames} frames of {rows}x{cols}; truncated.")
    masks: np.ndarray = flat[: frames * count].reshape(frames, rows, cols)
    if fractional:
        top = float(getattr(ds, "MaximumFractionalValue", 255)) or 255.0
        masks = masks.astype(np.float32) / top >= 0.5
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if (iop.shape != (6,) or positions.shape != (frames, 3) or not np.isfinite(positions).all()
            or abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
            or abs(row_dir @ col_dir) > 1e-3 or min(row_spacing, col_spacing) <= 0):
        raise DicomError(f"{path}: the SEG's orientation, positions or pixel spacing are not a valid grid.")
    if reference is not None:
        grid = reference
        d = reference.direction_matrix
        if (reference.size[0], reference.size[1]) != (cols, rows) or not np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4):
            raise DicomError(f"{path}: the SEG frames ({cols}x{rows}) are not on the grid of {reference.name}.")
        origin, spacing, direction = np.asarray(reference.origin), np.asarray(reference.spacing), d
        depth = reference.size[2]
    else:
        along = positions @ normal
        order = np.unique(np.round(along, 4))
        steps = np.diff(order)
        step = float(between) if between else (float(steps.min()) if steps.size else 1.0)
        first = positions[int(np.argmin(along))]
        depth = int(round((order[-1] - order[0]) / step)) + 1 if steps.size else 1
        if not np.isfinite(step) or step <= 0:
            raise DicomError(f"{path}: the SEG's slice spacing {step} is not positive.")
        if depth > MAX_SLICES or depth * count > MAX_LABEL_VOXELS:
            raise DicomError(f"{path}: the SEG's frames span {depth} slices of {rows}x{cols}; refused as too large.")
        direction = np.column_stack([row_dir, col_dir, normal])
        origin, spacing = first, np.array([col_spacing, row_spacing, step])
        grid = None
    out = np.zeros((depth, rows, cols), dtype=np.uint8 if len(segments) < 256 else np.uint16)
    inverse = np.linalg.inv(direction * spacing)
    for frame, (position, number) in enumerate(zip(positions, numbers, strict=True)):
        index = inverse @ (position - origin)
        k = int(round(index[2]))
        if abs(index[2] - k) > 0.01 or np.abs(index[:2]).max() > 0.01 or not 0 <= k < depth:
            raise DicomError(f"{path}: frame {frame + 1} lies off the grid (slice {index[2]:.3f}).")
        out[k][masks[frame] > 0] = number
    if grid is not None:
        labels = grid.with_array(out, path=path)
        labels.metadata = {}
    else:
        labels = Volume(out, spacing=tuple(spacing), origin=tuple(origin), direction=tuple(direction.ravel()), path=path)
    return SegData(labels, segments, referenced, str(ds.StudyInstanceUID), str(ds.FrameOfReferenceUID), fractional)


def is_seg_file(path: Path | str) -> bool:
    """True for a file whose DICOM header says Segmentation Storage (reads the header only)."""
    import pydicom

    path = Path(path)
    try:
        if not path.is_file():
            return False
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(getattr(ds, "SOPClassUID", "")) == SEGMENTATION_STORAGE
    except Exception:   # pydicom raises many types for files that are not DICOM: then it is no SEG
        log.debug("%s: not read as DICOM", path, exc_info=True)
        return False
