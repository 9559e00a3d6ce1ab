"""Backends run a model: in process (``local.py``), on a Triton server or an embedded one
(``triton.py``), or on a fleet of Triton servers (``fleet.py``).

Which one a run uses is decided in one place for every entry point:
:func:`clara_napari.core.session.choose_server`, then :func:`clara_napari.core.session.open_backend`.
"""
from __future__ import annotations

from .base import ModelHandle
from .local import LocalBackend

__all__ = ["ModelHandle", "LocalBackend"]
