"""Many studies on a Dask ``distributed`` cluster: one task per volume, one model session per worker.

``run_on_dask(options, workers=N)`` starts a :class:`distributed.LocalCluster` of ``N`` worker
processes on loopback; ``scheduler="tcp://host:8786"`` uses an existing cluster. Each task runs
the operator's own per-volume function (:func:`~clara_napari.core.operator.run_one`: checks,
read, segment, atomic writes, publish bundle) with a model session that its worker opened once
and keeps for every later volume. A worker that dies loses only the volume it was running,
which is submitted once more; the results come back in input order, each reported as it ends.

The embedded Triton server is one per machine: for a LocalCluster this process starts it and
hands its address to the workers; on an existing cluster the first worker of each machine
starts one under a file lock and the others on that machine use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .apps import App
from .errors import ClaraNapariError, ConfigError, ServerError
from .machine_server import machine_server, stop_machine_servers
from .operator import RunOptions, VolumeResult, check_run, list_inputs, run_one
from .session import EMBEDDED, ServerChoice, Session, choose_server

log = logging.getLogger(__name__)

#: how many times a volume whose worker died is submitted again
RETRIES = 1


@dataclass
class StudyResult(VolumeResult):
    """A :class:`VolumeResult` with where and how often it ran."""

    attempts: int = 1
    worker: str = ""
    #: model sessions the worker had opened when it finished this volume (1: opened once, reused)
    sessions_opened: int = 0
    #: the server or runtime the worker's session ran the model on (its description)
    server: str = ""


@dataclass(frozen=True)
class StudyJob:
    """What a worker needs to segment volumes of a run (small and picklable)."""

    app: App
    input: str
    output: str
    publish: str | None
    overwrite: bool
    publish_format: str
    #: where the run goes (:func:`~clara_napari.core.session.choose_server`, decided on the client);
    #: None: each machine's own embedded server (see ``embedded``)
    choice: ServerChoice | None
    threads: int | None
    server_options: dict = field(default_factory=dict)
    multi: bool = False
    #: choice None: True → this machine's embedded server
    embedded: bool = False
    #: the key of the embedded server the client started for a LocalCluster (its restricted APIs,
    #: inference included, answer only with it; handed to the workers over the cluster's loopback)
    server_key: str = field(default="", repr=False)

    def run_options(self) -> RunOptions:
        return RunOptions(app=self.app, input=Path(self.input), output=Path(self.output),
                          publish=Path(self.publish) if self.publish else None,
                          overwrite=self.overwrite, threads=self.threads, publish_format=self.publish_format,
                          server_options=dict(self.server_options))


# -- worker side -----------------------------------------------------------------------------
_SESSIONS: dict = {}
_SESSION_LOCK = threading.Lock()
_OPENED = [0]


def _session_key(job: StudyJob) -> str:
    return json.dumps([str(job.app.config_path), job.app.model, repr(job.choice), job.threads,
                       sorted((k, str(v)) for k, v in job.server_options.items())], default=str)


def _worker_session(job: StudyJob) -> Session:
    """This worker's model session for ``job``'s app and server, opened on first use and kept."""
    key = _session_key(job)
    with _SESSION_LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        choice = job.choice
        if choice is None:   # this machine's embedded server, started by its first worker
            from .apps import refuse_python_models

            refuse_python_models(job.app.model_repository)
            choice = choose_server(machine_server(job.app.model_repository, _protocol(job), job.threads),
                                   protocol=_protocol(job))
        elif job.server_key and choice.address is not None:
            from .triton.keys import share_server_key

            share_server_key(str(choice.address), job.server_key)
        transport = dict(job.server_options)
        runtime = transport.pop("runtime", None)
        session = Session(job.app, choice=choice, threads=job.threads, runtime=runtime, transport=transport).open()
        _SESSIONS[key] = session
        _OPENED[0] += 1
        return session


def _protocol(job: StudyJob) -> str:
    return "grpc" if (job.server_options.get("protocol") or job.app.config.inferer.protocol).lower() == "grpc" \
        else "http"


def close_sessions() -> None:
    """Close this process's cached model sessions (and a machine server it started)."""
    with _SESSION_LOCK:
        sessions = list(_SESSIONS.values())
        _SESSIONS.clear()
    for session in sessions:
        try:
            session.close()
        except Exception:   # closing is best effort: the worker is going away
            log.debug("closing a model session failed", exc_info=True)
    stop_machine_servers()


def segment_study(job: StudyJob, source: str) -> dict:
    """Segment one volume on this worker (a Dask task); returns a small picklable summary."""
    from distributed import get_worker

    try:
        this = get_worker()
        worker = this.address
    except ValueError:
        this, worker = None, f"pid {os.getpid()}"
    start = time.perf_counter()
    try:
        session = _worker_session(job)
    except Exception as exc:   # the server or model: this volume fails, the worker lives on
        if isinstance(exc, ClaraNapariError):
            message = str(exc)
        else:
            log.exception("internal error opening the model session for %s", source)
            message = f"{source}: {type(exc).__name__}: {exc}"
        return {"ok": False, "message": message, "seconds": time.perf_counter() - start, "outputs": [],
                "worker": worker, "pid": os.getpid(), "opened": _OPENED[0]}
    result = run_one(job.run_options(), Path(source), session, _progress_events(this, source), None, multi=job.multi)
    return {"ok": result.ok, "message": result.message, "seconds": result.seconds,
            "outputs": [str(p) for p in result.outputs], "worker": worker, "pid": os.getpid(), "opened": _OPENED[0],
            "server": session.description}


#: the Dask event topic of per-study window progress (in quarters)
PROGRESS_TOPIC = "clara-napari-progress"


def _progress_events(worker, source: str):
    """A ``progress_for`` that sends each quarter of a volume's windows to the client as an event."""
    if worker is None:
        return None

    def progress_for(_path):
        last = [-1]

        def report(done: int, total: int) -> None:
            step = done * 4 // max(total, 1)
            if step != last[0]:
                last[0] = step
                with contextlib.suppress(Exception):
                    worker.log_event(PROGRESS_TOPIC, {"source": source, "done": done, "total": total})
        return report
    return progress_for


# -- client side -----------------------------------------------------------------------------
def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError("running on Dask needs the distributed package "
                          "(pip install 'clara-napari[scale]').") from None
    return distributed


def check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least one worker.")


def local_cluster(workers: int):
    """A LocalCluster of ``workers`` single-threaded processes on loopback, no dashboard, where a
    task is sent to a worker only when it is free and a task whose worker died is not retried
    by the scheduler (:func:`run_on_dask` retries it once itself)."""
    import dask

    distributed = _distributed()
    check_workers(workers)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None)


def study_key(index: int, source: Path, attempt: int) -> str:
    """The Dask task key of a volume's attempt (readable in the dashboard and logs)."""
    return f"clara-study-{index:05d}-{safe_key(source.name)}-try{attempt}"


def safe_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:60]


def run_on_dask(options: RunOptions, *, workers: int | None = None, scheduler: str | None = None,
                report: Callable[[VolumeResult], None] | None = None,
                progress: Callable[[Path, int, int], None] | None = None,
                timeout_s: float | None = None) -> list[StudyResult]:
    """Segment every input volume as one Dask task each; one result per volume, in input order.

    ``workers``: a LocalCluster of that many processes; ``scheduler``: an existing cluster's
    address. ``report`` is called on this side as each volume ends, ``progress(path, done, total)``
    with each quarter of a volume's windows (default: a log line). ``timeout_s`` bounds the
    whole run (default: none).
    """
    if (workers is None) == (scheduler is None):
        raise ConfigError("give either --workers N (a local Dask cluster) or --scheduler ADDRESS, not both.")
    distributed = _distributed()
    if workers is not None:
        check_workers(workers)
    check_run(options)
    inputs = list_inputs(options.input, options.first_only)
    embedded = None
    choice = choose_server(options.server, inferer=options.app.config.inferer,
                           protocol=options.server_options.get("protocol"))
    if choice.kind == EMBEDDED:   # an app's python-backend model is code: refused before any worker starts
        from .apps import refuse_python_models

        refuse_python_models(options.app.model_repository)
    with contextlib.ExitStack() as stack:
        if workers is not None:
            cluster = stack.enter_context(local_cluster(workers))
            address = cluster.scheduler_address
            if choice.kind == EMBEDDED:   # this machine runs the workers: one server for all of them
                from .triton.embedded import EmbeddedServer

                embedded = stack.enter_context(EmbeddedServer(options.app.model_repository, threads=options.threads))
                choice = choose_server(embedded.grpc_url if choice.protocol == "grpc" else embedded.http_url,
                                       protocol=choice.protocol)
        else:
            address = scheduler
        try:
            client = stack.enter_context(distributed.Client(address, timeout=30, set_as_default=False))
        except (OSError, TimeoutError) as exc:
            raise ServerError(f"Dask scheduler {address}: cannot connect ({exc}).") from None
        stack.enter_context(_progress_subscription(client, progress))
        if workers is not None:
            # close the model sessions in each worker when the cluster goes (their servers too)
            stack.callback(_close_worker_sessions, client)
        job = StudyJob(app=dataclasses.replace(options.app), input=str(options.input), output=str(options.output),
                       publish=str(options.publish) if options.publish is not None else None,
                       overwrite=options.overwrite, publish_format=options.publish_format,
                       choice=None if choice.kind == EMBEDDED else choice,
                       threads=options.threads, server_options=dict(options.server_options), multi=len(inputs) > 1,
                       embedded=choice.kind == EMBEDDED,
                       server_key=embedded.key if embedded is not None else "")
        return _gather(client, distributed, job, inputs, report, timeout_s)


@contextlib.contextmanager
def _progress_subscription(client, progress):
    def handler(event) -> None:
        _, message = event
        try:
            if progress is not None:
                progress(Path(message["source"]), int(message["done"]), int(message["total"]))
            else:
                log.info("%s: %d/%d windows", Path(message["source"]).name, message["done"], message["total"])
        except Exception:   # a progress display must never break the run
            log.debug("progress event %r not shown", message, exc_info=True)

    client.subscribe_topic(PROGRESS_TOPIC, handler)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(PROGRESS_TOPIC)


def _close_worker_sessions(client) -> None:
    with contextlib.suppress(Exception):
        client.run(close_sessions)


def _gather(client, distributed, job: StudyJob, inputs: list[Path], report, timeout_s) -> list[StudyResult]:
    """Submit as many volumes as the cluster has worker threads (topped up as they end), so a
    worker holds only the volume it runs and its death loses no other one."""
    waiting = [(index, source, 1) for index, source in enumerate(inputs)]
    waiting.reverse()
    pending: dict = {}
    results: dict[int, StudyResult] = {}
    started = time.perf_counter()
    deadline = None if timeout_s is None else started + timeout_s

    def top_up() -> None:
        capacity = max(1, sum(client.nthreads().values()))
        while waiting and len(pending) < capacity:
            index, source, attempt = waiting.pop()
            future = client.submit(segment_study, job, str(source), key=study_key(index, source, attempt), pure=False)
            pending[future] = (index, source, attempt)

    top_up()
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            future = next(distributed.as_completed(list(pending), loop=client.loop, timeout=left))
        except TimeoutError:
            for other in pending:
                other.cancel()
            raise ServerError(f"Dask run of {job.input}: {len(pending) + len(waiting)} volumes not done within "
                              f"{timeout_s:.0f} s.") from None
        index, source, attempt = pending.pop(future)
        try:
            summary = future.result()
        except distributed.KilledWorker:
            if attempt <= RETRIES:
                log.warning("%s: its Dask worker died; running it once more", source.name)
                waiting.append((index, source, attempt + 1))
                top_up()
                continue
            result = StudyResult(source, False, f"{source}: the Dask worker running it died {attempt} times; "
                                 "given up.", time.perf_counter() - started, attempts=attempt)
        except Exception as exc:   # the task itself failed: this volume's result says so, the others go on
            log.warning("the Dask task of %s failed", source, exc_info=True)
            result = StudyResult(source, False, f"{source}: the Dask task failed ({type(exc).__name__}: {exc}).",
                                 time.perf_counter() - started, attempts=attempt)
        else:
            message = summary["message"]
            if attempt > 1 and summary["ok"]:
                message += f" (attempt {attempt}: its first worker died)"
            result = StudyResult(source, summary["ok"], message, summary["seconds"],
                                 [Path(p) for p in summary["outputs"]], attempts=attempt, worker=summary["worker"],
                                 sessions_opened=summary["opened"], server=summary.get("server", ""))
        results[index] = result
        if report:
            report(result)
        top_up()
    return [results[i] for i in range(len(inputs))]
