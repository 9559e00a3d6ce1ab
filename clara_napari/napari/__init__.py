"""The napari plugin: reader, writers, sample data and the Triton Inference widget (npe2 manifest ``napari.yaml``).

Only :mod:`._widget` imports napari and Qt; the reader, writers and geometry helpers work with
plain arrays and dicts, as npe2 hands them over.
"""
