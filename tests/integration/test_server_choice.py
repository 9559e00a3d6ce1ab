"""One table of server-choice cases driven through every entry point: the notebook API, ``clara-napari
run``, ``clara-napari models``, a Dask run, the napari widget's run and its model refresh.

Each case names a server (or not), sets ``$NVIDIA_CLARA_TRTISURI`` (or not) and gives the app an
inferer ``ip``/``port`` (or not). The three addresses are loopback ports held bound but not
listening, so a run sent to one fails naming exactly that port: the error says which one the entry
point chose. ``local`` and the embedded server run a real (tiny) ONNX model.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import resolve_app
from clara_napari.core.errors import ServerError
from clara_napari.core.operator import RunOptions
from clara_napari.core.volume import Volume
from clara_napari.napari._runner import Job, connect, run_job

from helpers.tiny_app import TINY, tiny_app

ENV, APP, NAMED = "env", "app", "named"
LOCAL, EMBEDDED = "local", "embedded"

#: (id, --server, $NVIDIA_CLARA_TRTISURI, the app's ip/port, what the run must use)
CASES = [
    ("local-beats-everything", "local", ENV, APP, LOCAL),
    ("named-beats-env-and-app", NAMED, ENV, APP, NAMED),
    ("env-beats-app", None, ENV, APP, ENV),
    ("auto-is-the-default", "auto", ENV, APP, ENV),
    ("app-address", None, None, APP, APP),
    ("nothing-named-embedded", None, None, None, EMBEDDED),
    ("embedded-named", "embedded", ENV, APP, EMBEDDED),
]


@pytest.fixture(scope="module")
def closed_ports():
    """Three loopback ports bound (so nobody else takes them) but not listening: connections are refused."""
    sockets = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    yield dict(zip((ENV, APP, NAMED), (s.getsockname()[1] for s in sockets), strict=True))
    for sock in sockets:
        sock.close()


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("input")
    array = np.random.default_rng(3).normal(size=(20, 20, 20)).astype(np.float32)
    cn.write_volume(Volume(array, spacing=(0.9, 1.1, 1.3), origin=(-3.5, 7.25, 11.0)), folder / "small.nii.gz")
    return folder / "small.nii.gz"


def make_app(folder: Path, port: int | None) -> Path:
    tiny_app(folder)
    if port is not None:
        config_file = folder / "config_inference.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["inferer"]["args"].update({"ip": "127.0.0.1", "port": port})
        config_file.write_text(json.dumps(config), encoding="utf-8")
    return folder


def classify(description: str) -> tuple[str, str]:
    """What a run's backend description says it used: local, embedded, or a Triton address."""
    if description.startswith("local"):
        return LOCAL, ""
    if description.startswith("embedded Triton at "):
        return EMBEDDED, ""
    found = re.match(r"Triton at (\S+)", description)
    assert found, description
    return "remote", found.group(1)


# -- the entry points: each returns what it ran on, or raises with the message it gave -----------
def via_api(app_folder: Path, volume: Path, server: str | None, tmp: Path) -> str:
    return cn.run_app(volume, resolve_app(app_folder), server=server, ready_timeout_s=1).backend


def via_cli_run(app_folder: Path, volume: Path, server: str | None, tmp: Path, capsys=None) -> str:
    argv = ["run", "--app", str(app_folder), "--input", str(volume.parent), "--output", str(tmp / "out"),
            "--logs", str(tmp / "logs"), "--no-publish", "--ready-timeout", "1"]
    status = main(argv + (["--server", server] if server else []))
    if status != 0:
        raise ServerError(capsys.readouterr().err)
    text = "".join(p.read_text(encoding="utf-8") for p in (tmp / "logs").glob("*.log"))
    return re.search(rf"model {TINY} opened on (.+)", text).group(1)


def via_cli_models(app_folder: Path, volume: Path, server: str | None, tmp: Path, capsys=None) -> str:
    capsys.readouterr()
    status = main(["models", "--app", str(app_folder), "--ready-timeout", "1"] + (["--server", server] if server else []))
    captured = capsys.readouterr()
    if status != 0:
        raise ServerError(captured.err)
    return captured.out.splitlines()[0]


def via_dask(app_folder: Path, volume: Path, server: str | None, tmp: Path) -> str:
    from clara_napari.core.dask_runs import run_on_dask

    options = RunOptions(app=resolve_app(app_folder), input=volume.parent, output=tmp / "out", server=server,
                         server_options={"ready_timeout_s": 1})
    [result] = run_on_dask(options, workers=1, timeout_s=300)
    if not result.ok:
        raise ServerError(result.message)
    return result.server


def via_widget_run(app_folder: Path, volume: Path, server: str | None, tmp: Path) -> str:
    app = resolve_app(app_folder)
    outcome = run_job(Job(volume=cn.read_volume(volume), app=app, config=app.config, server=server or "auto",
                          ready_timeout_s=1))
    if outcome.error is not None:
        raise outcome.error
    return outcome.segmentation.backend


def via_widget_refresh(app_folder: Path, volume: Path, server: str | None, tmp: Path) -> str:
    app = resolve_app(app_folder)
    info = connect(server or "auto", "HTTP", app.model_repository, ready_timeout_s=1, inferer=app.config.inferer)
    assert TINY in info.models
    return info.description if info.kind != EMBEDDED else f"embedded Triton at {info.address}"


ENTRY_POINTS = {"api": via_api, "cli-run": via_cli_run, "cli-models": via_cli_models, "dask": via_dask,
                "widget-run": via_widget_run, "widget-refresh": via_widget_refresh}


def _params():
    for case in CASES:
        for name in ENTRY_POINTS:
            marks = [pytest.mark.triton] if case[-1] == EMBEDDED else []
            if name == "dask":
                marks.append(pytest.mark.slow)
            yield pytest.param(name, *case[1:], id=f"{case[0]}-{name}", marks=marks)


@pytest.mark.parametrize("entry,server,env,app_address,expected", list(_params()))
def test_every_entry_point_chooses_the_same_server(entry, server, env, app_address, expected, closed_ports,
                                                   volume_file, tmp_path, monkeypatch, capsys):
    ports = closed_ports
    if env:
        monkeypatch.setenv("NVIDIA_CLARA_TRTISURI", f"127.0.0.1:{ports[ENV]}")
    else:
        monkeypatch.delenv("NVIDIA_CLARA_TRTISURI", raising=False)
    app_folder = make_app(tmp_path / "app", ports[APP] if app_address else None)
    named = f"127.0.0.1:{ports[NAMED]}" if server == NAMED else server
    run = ENTRY_POINTS[entry]
    extra = {"capsys": capsys} if entry.startswith("cli") else {}
    if expected in (ENV, APP, NAMED):   # nothing listens there: the error names the port it chose
        with pytest.raises(ServerError) as caught:
            run(app_folder, volume_file, named, tmp_path, **extra)
        chosen = {p for p, port in ports.items() if f"127.0.0.1:{port}" in str(caught.value)}
        assert chosen == {expected}, str(caught.value)
    else:
        description = run(app_folder, volume_file, named, tmp_path, **extra)
        assert classify(description)[0] == expected, description
