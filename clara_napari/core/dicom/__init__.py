"""DICOM beyond reading a series: the source instances of a series, DICOM SEG out and in, a PACS.

Everything heavy (pydicom, highdicom, dicomweb-client, pynetdicom) is imported inside the
functions that need it; importing this package costs nothing.
"""
from __future__ import annotations

from .series import is_dicom_series, series_files

__all__ = ["is_dicom_series", "series_files"]
