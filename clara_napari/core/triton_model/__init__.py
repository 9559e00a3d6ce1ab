"""The python-backend program the embedded Triton server runs for each model (see :mod:`.model`).

``model.py`` is a program for Triton's python-backend stub, not a module to import here: it reads
``clara_napari_sys_path.json`` beside itself when loaded.
"""
from __future__ import annotations

from pathlib import Path

#: copied as ``<model>/<version>/model.py`` into the embedded server's generated repository
MODEL_PROGRAM = Path(__file__).with_name("model.py")

#: ``config.pbtxt`` parameters the program reads
PARAMETERS = ("clara_napari_model_folder", "clara_napari_model_filename", "clara_napari_format",
              "clara_napari_runtime", "clara_napari_threads")
