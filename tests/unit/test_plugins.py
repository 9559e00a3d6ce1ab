"""Custom components come from installed packages (entry points), never from a config file."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from clara_napari.core.apps import DATA_ROOT

ROOT = Path(__file__).resolve().parents[2]


def test_entry_point_registers_a_transform(tmp_path):
    """A real (tiny) distribution on sys.path declares the entry point; its transform becomes usable."""
    site = tmp_path / "site"
    (site / "my_plugin").mkdir(parents=True)
    (site / "my_plugin" / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np
        from clara_napari.core.registry import FieldsMixin
        from clara_napari.core.transforms import TRANSFORMS, Transform

        @TRANSFORMS.register("InvertIntensity")
        class InvertIntensity(FieldsMixin, Transform):
            def __call__(self, sample):
                for key in self.fields:
                    sample[key] = -sample.array(key, self.config_name)
    '''))
    dist = site / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clara_napari.components]\nmine = my_plugin\n")
    config = json.loads((DATA_ROOT / "config/lung_ct/config_inference.json").read_text())
    config["pre_transforms"].append({"name": "InvertIntensity", "args": {"fields": "image"}})
    (tmp_path / "config_inference.json").write_text(json.dumps(config))
    code = textwrap.dedent(f'''
        import sys
        from clara_napari.core.apps import resolve_app
        from clara_napari.core.errors import ConfigError
        app = resolve_app({str(tmp_path / "config_inference.json")!r})
        try:
            app.config
            print("loaded")
        except ConfigError as exc:
            print("refused:", exc)
    ''')
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "unknown transform 'InvertIntensity'" in plain.stdout, plain.stdout + plain.stderr
    with_plugin = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                 env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert "loaded" in with_plugin.stdout and "refused" not in with_plugin.stdout, with_plugin.stdout + with_plugin.stderr
