"""The peers the bench compares against: MONAI's sliding window (``monai``) and TorchScript in
torch (``torch``); both need the ``[bench]`` extra and are skipped with a note without it."""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .plan import TORCHSCRIPT, Skip
from .runners import Runner


class MonaiRunner(Runner):
    """MONAI's ``sliding_window_inference`` around the same onnxruntime session options."""

    name = "monai"

    def setup(self) -> None:
        try:
            import monai
            import torch
            from monai.inferers import sliding_window_inference
        except ImportError as exc:
            raise Skip(f"not installed ({exc.name}); pip install -e '.[bench]'") from None
        from .runners import open_model

        torch.set_num_threads(self.job.threads)
        self.torch, self.swi = torch, sliding_window_inference
        self.model = open_model(self.job)
        self.model.predict(self.window())
        self.note = (f"MONAI {monai.__version__}, torch {torch.__version__.split('+')[0]} "
                     f"({torch.get_num_threads()} threads), {self.model.description}, {self._same_windows()}")

    def _same_windows(self) -> str:
        """Whether MONAI places its windows where our engine does (the same count, at least, always)."""
        try:
            from monai.data.utils import dense_patch_slices
            from monai.inferers.utils import _get_scan_interval
        except ImportError:
            return "windows not compared"
        job = self.job
        shape = tuple(max(s, r) for s, r in zip(job.image.shape[1:], job.roi, strict=True))
        interval = _get_scan_interval(shape, job.roi, len(shape), [job.overlap] * len(shape))
        theirs = sorted(tuple(s.start for s in w) for w in dense_patch_slices(shape, job.roi, interval))
        ours = sorted(tuple(s.start for s in w) for w in job.plan.windows())
        if theirs == ours:
            return f"identical windows ({len(ours)})"
        return f"{len(theirs)} windows (ours {len(ours)}), placed differently"

    def _predict(self, batch):
        return self.torch.from_numpy(self.model.predict(batch.numpy()))

    def run(self) -> tuple[float, np.ndarray]:
        job = self.job
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.swi(self.torch.from_numpy(job.image[None]), list(job.roi), job.batch_size, self._predict,
                           overlap=job.overlap, mode=job.blending, sigma_scale=0.125, padding_mode="constant",
                           cval=job.pad_value)
        result = out[0].numpy()
        return time.perf_counter() - start, result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.model.close()


class TorchRunner(Runner):
    """MONAI's ``sliding_window_inference`` calling deepbet's TorchScript network in torch (no NumPy)."""

    name = "torch"

    def setup(self) -> None:
        from ..core.apps import sample_data_dir

        try:
            import torch
            from monai.inferers import sliding_window_inference
        except ImportError as exc:
            raise Skip(f"not installed ({exc.name}); pip install -e '.[bench]'") from None
        folder = sample_data_dir() / TORCHSCRIPT / self.job.model_name
        if not (folder / "1" / "model.pt").is_file():
            raise Skip(f"no TorchScript file of {self.job.model_name} ({folder / '1' / 'model.pt'})")
        torch.set_num_threads(self.job.threads)
        self.torch, self.swi = torch, sliding_window_inference
        self.network = torch.jit.load(str(folder / "1" / "model.pt"), map_location="cpu").eval()
        with torch.inference_mode():
            for _ in range(2):   # TorchScript's profiling executor optimises on the first calls
                self.network(torch.from_numpy(self.first_batch()))
        self.note = (f"TorchScript on torch {torch.__version__.split('+')[0]} ({torch.get_num_threads()} threads), "
                     f"MONAI's sliding window")

    def predict_volume(self, image: np.ndarray) -> np.ndarray:
        job = self.job
        with self.torch.inference_mode():
            out = self.swi(self.torch.from_numpy(image[None]), list(job.roi), job.batch_size, self.network,
                           overlap=job.overlap, mode=job.blending, sigma_scale=0.125, padding_mode="constant",
                           cval=job.pad_value)
        return out[0].numpy()

    def run(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        result = self.predict_volume(self.job.image)
        return time.perf_counter() - start, result
