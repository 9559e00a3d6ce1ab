"""One-off export of deepbet's brain-extraction network (MIT) to ONNX.

Run once, with a throw-away environment that has torch (the runtime never needs it):

    python -m venv /tmp/export && /tmp/export/bin/pip install torch==2.13.0 onnx
    /tmp/export/bin/pip download --no-deps deepbet==1.0.2 -d /tmp/deepbet
    /tmp/export/bin/python scripts/export_deepbet_onnx.py /tmp/deepbet/deepbet-1.0.2-py3-none-any.whl

The wheel carries TorchScript networks at ``data/models/model.pt``; this script reads
``model.pt`` straight out of the zip and writes
``sample_data/models/deepbet_brain_t1/1/model.onnx`` with a dynamic batch dimension and
dynamic spatial sizes (each must be a multiple of 32 at run time).
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "clara_napari" / "data" / "sample_data" / "models" / "deepbet_brain_t1" / "1" / "model.onnx"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read("data/models/model.pt")
    net = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
    example = torch.zeros(1, 1, 64, 64, 64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net, (example,), str(OUT), opset_version=17, dynamo=False,
        input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n", 2: "d", 3: "h", 4: "w"}, "y": {0: "n", 2: "d", 3: "h", 4: "w"}},
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(sys.argv[1])
