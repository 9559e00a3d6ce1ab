"""Static resources of the plugin (the napari hub icon)."""
