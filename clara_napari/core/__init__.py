"""Everything that runs without Qt or napari: volumes, configs, engine, backends, writers."""
