"""The process as an attacker (or a long unattended job) sees it: descriptors and threads stay flat
over hundreds of volumes, Ctrl-C and SIGTERM stop a run at once and leave nothing behind, and
secrets (header values, URL credentials, model config contents) never reach stderr or the logs.

Everything runs against the real embedded Triton server (or onnxruntime in process) on real
files; the CLI is run as a real subprocess where signals and resource limits are involved.
"""
from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from clara_napari.core.volume import write_volume

from helpers.security_process import (  # noqa: E402
    SECRET,
    _logs_text,
    _run_cli,
    cli,
    cli_env,
    open_fds,
    small_volume,
)

ROOT = Path(__file__).resolve().parents[2]


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 401 to everything and records the Authorization headers it was sent."""

    seen: list = []

    def _refuse(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"error": "unauthorized"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse  # noqa: N815 - http.server naming

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_server():
    _RefusingHandler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], _RefusingHandler.seen
    httpd.shutdown()
    httpd.server_close()


def test_mask_hides_url_credentials_and_remembered_values():
    from clara_napari.core.masking import forget_all, mask, remember

    assert mask("Triton at http://bob:pw-123456@h:8000 failed") == "Triton at http://***@h:8000 failed"
    assert mask("grpcs://tok@h:1 and bob:pw-123456@h:8000") == "grpcs://***@h:1 and ***@h:8000"
    assert mask("a@b is not a credential") == "a@b is not a credential"   # no ':' before the '@'
    remember(SECRET)
    try:
        assert mask(f"header x={SECRET}; again {SECRET}") == "header x=***; again ***"
    finally:
        forget_all()
    assert SECRET in mask(SECRET)


def test_masking_filter_covers_message_args_and_traceback(tmp_path):
    import logging

    from clara_napari.core.masking import MaskingFilter, forget_all, remember

    remember(SECRET)
    logger = logging.getLogger("clara_napari.test_masking")
    handler = logging.FileHandler(tmp_path / "x.log")
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("token %s at %s", SECRET, "http://bob:pw-123456@h:1")
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            logger.exception("internal error")
    finally:
        logger.removeHandler(handler)
        handler.close()
        forget_all()
    text = (tmp_path / "x.log").read_text()
    assert SECRET not in text and "pw-123456" not in text
    assert "token *** at http://***@h:1" in text and "RuntimeError: failed with ***" in text


@pytest.mark.parametrize("item", [f"Authorization: Bearer {SECRET}", SECRET, f"={SECRET}"])
def test_malformed_header_is_not_echoed(tmp_path, item):
    result = _run_cli(["run", "--app", "lung_ct", "--server", "local", "--input", str(tmp_path / "in"),
                       "--output", str(tmp_path / "out"), "--no-publish", "--logs", str(tmp_path / "logs"),
                       "--header", item])
    assert result.returncode == 2
    assert "--header" in result.stderr and "is not KEY=VALUE" in result.stderr
    assert SECRET not in result.stderr + result.stdout + _logs_text(tmp_path / "logs")


def test_malformed_header_from_environment_is_not_echoed(tmp_path):
    env = dict(cli_env(), CLARA_NAPARI_HEADERS=f"ok=1;{SECRET}")
    result = subprocess.run(cli("models", "--server", "127.0.0.1:9"), capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2 and "CLARA_NAPARI_HEADERS" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["models", "run"])
def test_url_credentials_never_printed_and_sent_as_basic_auth(tmp_path, refusing_server, command):
    """``http://user:pass@host``: the server gets basic auth, stderr and the log file only ``***@``."""
    import base64

    port, seen = refusing_server
    url = f"http://bob:{SECRET}@127.0.0.1:{port}"
    args = ["--server", url, "--ready-timeout", "2", "--header", f"clara-key={SECRET}x"]
    if command == "run":
        inputs = tmp_path / "in"
        inputs.mkdir()
        write_volume(small_volume(0), inputs / "v.nii.gz")
        args = ["--debug", "run", "--app", "lung_ct", "--input", str(inputs), "--output", str(tmp_path / "out"),
                "--no-publish", "--logs", str(tmp_path / "logs"), *args]
    else:
        args = ["--debug", "models", *args]
    result = _run_cli(args)
    assert result.returncode != 0
    everything = result.stderr + result.stdout + _logs_text(tmp_path / "logs")
    assert f"http://127.0.0.1:{port}" in result.stderr and "refused" in result.stderr
    assert SECRET not in everything
    assert base64.b64encode(f"bob:{SECRET}".encode()).decode() not in everything
    assert f"Basic {base64.b64encode(f'bob:{SECRET}'.encode()).decode()}" in seen


def test_wrong_model_config_contents_not_quoted(tmp_path):
    from clara_napari.core.errors import ConfigError
    from clara_napari.core.model_repository import read_model_config

    secret_file = tmp_path / "credentials.pbtxt"
    secret_file.write_text(f"{SECRET}: 1\npassword: \"{SECRET}\"\n")
    with pytest.raises(ConfigError) as info:
        read_model_config(secret_file)
    assert SECRET not in str(info.value) and "line 1, column 1" in str(info.value)
    (tmp_path / "syntax.pbtxt").write_text(f'name: "x"\ninput [ {SECRET}')
    with pytest.raises(ConfigError) as info:
        read_model_config(tmp_path / "syntax.pbtxt")
    assert SECRET not in str(info.value) and "line 2" in str(info.value)


def test_app_logging_config_handlers_are_masked(tmp_path, refusing_server):
    """A handler that an app's logging config gives a named logger is masked too."""
    port, _ = refusing_server
    app_dir = tmp_path / "app"
    assert _run_cli(["new-app", str(app_dir), "--from", "lung_ct"]).returncode == 0
    (app_dir / "logging_config.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        # a relative file name: inside the run's --logs folder (an app may not write elsewhere)
        "handlers": {"f": {"class": "logging.FileHandler", "filename": "app.log", "level": "DEBUG"}},
        "loggers": {"clara_napari": {"handlers": ["f"], "level": "DEBUG"}}}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(small_volume(0), inputs / "v.nii.gz")
    result = _run_cli(["run", "--app", str(app_dir), "--input", str(inputs), "--output", str(tmp_path / "out"),
                       "--no-publish", "--logs", str(tmp_path / "logs"), "--ready-timeout", "2",
                       "--server", f"http://bob:{SECRET}@127.0.0.1:{port}", "--header", f"clara-key={SECRET}2"])
    assert result.returncode != 0
    app_log = (tmp_path / "logs" / "app.log").read_text()
    assert "app lung_ct" in app_log or "app app" in app_log   # the handler did receive the run's records
    assert SECRET not in app_log + result.stderr + _logs_text(tmp_path / "logs")


def test_widget_settings_never_store_url_credentials(tmp_path, monkeypatch):
    from clara_napari.napari._settings import load_settings, save_settings

    monkeypatch.setenv("CLARA_NAPARI_CONFIG_DIR", str(tmp_path))
    save_settings({"server": f"https://bob:{SECRET}@triton.example:8443", "protocol": "HTTP"})
    assert SECRET not in (tmp_path / "napari_widget.json").read_text()
    assert load_settings()["server"] == "https://triton.example:8443"


def test_client_threads_end_with_their_resources():
    """Each worker runs ``on_exit`` on its own thread when closed; calls after close are refused;
    a gevent hub made on a worker is destroyed with it (its descriptors are given back)."""
    from clara_napari.core.backends.client_threads import ClientThreads, destroy_gevent_hub

    pytest.importorskip("gevent")
    import gevent

    exited = []

    def on_exit() -> None:
        exited.append(threading.current_thread().name)
        destroy_gevent_hub()

    before = open_fds()
    workers = ClientThreads(3, name="test-workers", on_exit=on_exit)
    names = {workers.call(lambda: (gevent.get_hub(), gevent.sleep(0.05), threading.current_thread().name)[2])
             for _ in range(12)}
    assert names <= {f"test-workers-{i}" for i in range(3)}
    assert open_fds() > before   # the hubs hold descriptors while their threads live
    assert workers.close(timeout_s=10)
    assert sorted(exited) == [f"test-workers-{i}" for i in range(3)]
    assert open_fds() <= before
    with pytest.raises(RuntimeError):
        workers.call(lambda: None)
