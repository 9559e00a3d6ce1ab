"""TorchScript (``model.pt``, Triton's ``pytorch_libtorch``; what MONAI exports) run by torch on the CPU.

torch is an optional extra (``pip install "clara-napari[torch]"``). A TorchScript archive holds
TorchScript code and tensors, read by torch's own loader (``torch.jit.load``), never by pickle's
code-running path. As in Triton, inputs and outputs are matched by position: the config's
``INPUT__0``/``OUTPUT__1`` style names give the index, other names count in config order.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelMismatchError

_INDEXED = re.compile(r"__(\d+)$")
_THREADS_LOCK = threading.Lock()


def position(name: str, names: Sequence[str]) -> int:
    """Triton's rule: ``<anything>__<index>`` is argument ``index``; else the name's place in the config."""
    match = _INDEXED.search(name)
    return int(match.group(1)) if match else list(names).index(name)


class TorchScriptEngine:
    runtime = "torch"

    def __init__(self, model_file: Path, *, threads: int) -> None:
        from ..errors import first_line

        try:
            import torch
        except ImportError:
            raise ConfigError(f"{model_file}: TorchScript models need torch (pip install torch).") from None
        with _THREADS_LOCK:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        try:
            self.module = torch.jit.load(str(model_file), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError and friends
            raise ConfigError(f"{model_file}: torch cannot load the TorchScript model ({first_line(exc)}).") from exc
        self.torch = torch
        self.model_file = Path(model_file)
        self.threads = threads
        self.input_names: list[str] = []   # TorchScript has positions, not names: set by the caller
        self.output_names: list[str] = []
        self.description = f"torch {torch.__version__} CPU ({threads} threads)"

    def has_input(self, name: str) -> bool:
        return True

    def has_output(self, name: str) -> bool:
        return True

    def bind(self, input_names: Sequence[str], output_names: Sequence[str]) -> TorchScriptEngine:
        """The config's tensor names (their order gives the positions)."""
        self.input_names, self.output_names = list(input_names), list(output_names)
        return self

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str], *, copy: bool = True) -> list[np.ndarray]:
        from ..errors import first_line

        torch = self.torch
        input_names = self.input_names or list(inputs)
        output_names = self.output_names or list(outputs)
        args = [None] * len(input_names)
        for name, array in inputs.items():
            args[position(name, input_names)] = torch.from_numpy(np.ascontiguousarray(array))
        try:
            with torch.inference_mode():
                result = self.module(*args)
        except Exception as exc:  # e.g. a window size the network cannot take
            raise ModelMismatchError(f"{self.model_file}: torch cannot run the model on input shapes "
                                     f"{[list(a.shape) for a in inputs.values()]} ({first_line(exc, 300)}).") from exc
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        picked = []
        for name in outputs:
            index = position(name, output_names)
            if index >= len(results):
                raise ModelMismatchError(f"{self.model_file}: the model returns {len(results)} outputs, "
                                         f"output {name!r} would be number {index}.")
            picked.append(results[index].detach().cpu().numpy())
        return picked
