"""A bench variant's life (set-up with a warm-up window, timed run, close); the floor rows and the
``local`` row (our engine in this process)."""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .plan import Job, ServerInfo, Skip


def open_model(job: Job, server: str = "local", *, runtime: str | None = None, repository=None,
               model_name: str | None = None, **transport):
    """The bench's models are opened where :func:`clara_napari.core.session.choose_server` sends
    ``server`` (``local``: a runtime in this process; a URL: that Triton), as for every entry point.
    The backend holds nothing a local or remote model needs after opening, so it is not kept."""
    from ..core.session import choose_server, open_backend

    backend = open_backend(choose_server(server), threads=job.threads, runtime=runtime or job.runtime or None,
                           transport=transport)
    return backend.open(repository or job.repository, model_name or job.model_name)


class Runner:
    """One variant: ``setup`` (open, one warm-up window), ``run`` (the whole job, timed), ``close``."""

    name = ""

    def __init__(self, job: Job, server: ServerInfo | None = None) -> None:
        self.job = job
        self.server = server
        self.note = ""

    def setup(self) -> None: ...

    def run(self) -> tuple[float, np.ndarray | None]:
        """Seconds for the job, and the output (None where the variant stitches nothing)."""
        raise NotImplementedError

    def close(self) -> None: ...

    def window(self) -> np.ndarray:
        """The first window as a batch of one (for the warm-up)."""
        plan = self.job.plan
        image = self._padded()
        first = next(plan.windows())
        return np.ascontiguousarray(image[(slice(None),) + first][None])

    def first_batch(self) -> np.ndarray:
        """The first ``batch_size`` windows (a warm-up at the shape the run uses: OpenVINO and
        TorchScript prepare each new input shape on its first call)."""
        image = self._padded()
        windows = list(self.job.plan.windows())[: self.job.batch_size]
        return np.ascontiguousarray(np.stack([image[(slice(None),) + w] for w in windows]))

    def _padded(self) -> np.ndarray:
        plan = self.job.plan
        if any(a or b for a, b in plan.pad):
            return np.pad(self.job.image, ((0, 0),) + plan.pad, constant_values=self.job.pad_value)
        return self.job.image


class FloorRunner(Runner):
    """One runtime alone: every window's forward call, timed one by one and summed."""

    def __init__(self, job: Job, server: ServerInfo | None, runtime: str) -> None:
        super().__init__(job, server)
        self.runtime, self.name = runtime, f"floor-{runtime}"

    def setup(self) -> None:
        from ..core.errors import ConfigError
        from ..core.model_repository import find_model
        from ..core.runtimes import open_engine

        spec = find_model(self.job.repository, self.job.model_name)
        try:
            engine = open_engine(spec.model_file(), spec.runtime, runtime=self.runtime, threads=self.job.threads)
        except ConfigError as exc:
            raise Skip(str(exc)) from None
        self.input_name, self.output_name = spec.inputs[0].name, spec.outputs[0].name
        self.session = _EngineSession(engine)
        self.session.run([self.output_name], {self.input_name: self.window()})
        self.session.run([self.output_name], {self.input_name: self.first_batch()})
        self.note = f"{engine.description}, forward calls only"

    def run(self) -> tuple[float, None]:
        image = self._padded()
        windows = list(self.job.plan.windows())
        total = 0.0
        for i in range(0, len(windows), self.job.batch_size):
            batch = np.stack([image[(slice(None),) + w] for w in windows[i:i + self.job.batch_size]])
            start = time.perf_counter()
            self.session.run([self.output_name], {self.input_name: batch})
            total += time.perf_counter() - start
            del batch
        return total, None


class _EngineSession:
    """A runtime engine with onnxruntime's ``run(outputs, feed)`` call."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def run(self, outputs, feed):
        return self.engine.run(feed, outputs)


class EngineRunner(Runner):
    """Our engine (``sliding_window``) with a predictor, the app's settings."""

    def predictor(self):
        raise NotImplementedError

    def setup(self) -> None:
        self.model = self.predictor()
        self.model.predict(self.window())

    def run(self) -> tuple[float, np.ndarray]:
        from ..core.windows import sliding_window

        job = self.job
        start = time.perf_counter()
        out = sliding_window(job.image, self.model, job.roi, overlap=job.overlap, blending=job.blending,
                             batch_size=job.batch_size, in_flight=job.in_flight, pad_value=job.pad_value)
        return time.perf_counter() - start, out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.model.close()


class LocalRunner(EngineRunner):
    name = "local"

    def predictor(self):
        model = open_model(self.job)
        self.note = f"{model.description}, {self.job.in_flight} in flight"
        return model
