"""Issue 10, the embedded Triton server and ``serve``: locked-down model control, restricted APIs
with a per-start key, owner-only temp folders and shared memory, plain model names, stale temp
folders of killed runs (docs/security.md, section "Embedded Triton server and ``serve``").

Everything runs against the real ``tritonserver`` of the nvidia-pytriton wheel, real files and
real processes; an "attacker" is a plain client (urllib, tritonclient, curl-like requests) that
does not know the key.

Here: the rules checked without a server; the tests that start Triton are in tests/integration/test_security_server.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clara_napari.core.errors import ConfigError, ServerError
from clara_napari.core.model_repository import list_models, read_model_config
from clara_napari.core.triton.embedded import TEMP_PREFIX, EmbeddedServer
from clara_napari.core.triton.workdirs import remove_stale_workdirs

from helpers.security_server import LUNG, MODELS, _config

ROOT = Path(__file__).resolve().parents[2]


# -- item 10: model names are plain names (no server needed) -----------------------------------
@pytest.mark.parametrize("name", ["/tmp/abs/path", "../escape", "a/b", "a\\000b", "tab\\tname", "..", ".hidden",
                                  "-flag", "a b", "x" * 200])
def test_model_name_must_be_plain(tmp_path, name):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text(_config(name))
    with pytest.raises(ConfigError, match="not a plain name") as info:
        list_models(tmp_path)
    assert str(tmp_path / "m" / "config.pbtxt") in str(info.value)
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


@pytest.mark.parametrize("name", ["deepbet_brain_t1", "lung-air.v2", "A1"])
def test_plain_model_names_pass(tmp_path, name):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(_config(name))
    assert read_model_config(tmp_path / "m").name == name


def test_unnamed_model_takes_a_plain_folder_name(tmp_path):
    (tmp_path / "bad name").mkdir()
    (tmp_path / "bad name" / "config.pbtxt").write_text(_config("").replace('name: ""\n', ""))
    with pytest.raises(ConfigError, match="'bad name' is not a plain name"):
        list_models(tmp_path)


@pytest.mark.parametrize("file_name", ["../../../etc/passwd", "/etc/passwd", "sub/model.onnx", "..", "a\\nb"])
def test_default_model_filename_must_be_plain(tmp_path, file_name):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text(_config("m", onnx=True) + f'default_model_filename: "{file_name}"\n')
    with pytest.raises(ConfigError, match="default_model_filename .* not a plain name"):
        list_models(tmp_path)


def test_model_file_linked_outside_its_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(MODELS / LUNG / "1" / "model.onnx", outside)
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text((MODELS / LUNG / "config.pbtxt").read_text().replace(LUNG, "m"))
    (repo / "m" / "1" / "model.onnx").symlink_to(outside)
    with pytest.raises(ConfigError, match="links outside its model folder"):
        list_models(repo)[0].model_file()


def test_absolute_model_name_creates_nothing_outside(tmp_path):
    """The reproduced case: ``name: "/abs/path"`` made the launcher create that folder (never removed)."""
    target = tmp_path / "created_by_the_launcher"
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text(_config(str(target)))
    before = set(Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"))
    with pytest.raises(ConfigError, match="not a plain name"):
        EmbeddedServer(tmp_path / "repo").start()
    assert not target.exists()
    assert set(Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*")) <= before   # its own temp folder went too


# -- serve's address policy (no server needed) ---------------------------------------------------
def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "clara_napari", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::"])
def test_serve_on_a_non_loopback_address_needs_tls_or_insecure(host):
    done = _cli("serve", "--host", host)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs TLS" in lines[0] and "--insecure" in lines[0] and host in lines[0]
    assert not done.stdout


def test_serve_policy():
    from clara_napari.core.serve_policy import is_loopback, serve_options

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert serve_options("0.0.0.0", insecure=True)["host"] == "0.0.0.0"
    cert = str(ROOT / "README.md")   # any existing file: the policy only checks presence
    tls = serve_options("0.0.0.0", tls_cert=cert, tls_key=cert)
    assert tls["http_host"] == "127.0.0.1" and tls["grpc_tls"]["cert"] == cert
    with pytest.raises(ServerError, match="go together"):
        serve_options("0.0.0.0", tls_cert=cert)


# -- item 12: temp folders left by a killed run -------------------------------------------------
def test_stale_workdir_rules(tmp_path):
    """Removed: ours, owner dead. Kept: owner alive, no owner record and young, another user's, links."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getpid()

    def folder(name: str, owner: str | None) -> Path:
        path = tmp_path / (TEMP_PREFIX + name)
        path.mkdir(mode=0o700)
        if owner is not None:
            (path / "owner.pid").write_text(owner)
        return path

    stale = folder("dead", f"{dead.pid} 1")
    alive = folder("alive", f"{live} {Path(f'/proc/{live}/stat').read_text().rsplit(')', 1)[1].split()[19]}")
    reused = folder("reused", f"{live} 1")            # our PID now, but another start time: the owner is gone
    young = folder("young", None)
    old = folder("old", None)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    link = tmp_path / (TEMP_PREFIX + "link")
    link.symlink_to(stale)
    removed = remove_stale_workdirs(tmp_path)
    assert sorted(removed) == sorted([stale, reused, old])
    assert alive.is_dir() and young.is_dir() and link.is_symlink()
    if os.getuid() == 0:   # as root we can fake another user's folder: never touched
        other = folder("other", f"{dead.pid} 1")
        os.chown(other, 65534, 65534)
        assert remove_stale_workdirs(tmp_path) == [] and other.is_dir()


def test_exposure_lines_say_what_is_reachable():
    from clara_napari.core.serve_policy import exposure_lines, serve_options

    insecure = EmbeddedServer(MODELS, **serve_options("0.0.0.0", insecure=True))
    text = "\n".join(exposure_lines(insecure, None))
    assert "EVERY interface" in text and "no TLS" in text and "WARNING: --insecure" in text
    assert "metrics off" in text and "model-repository" in text and "shared-memory" in text
    local = "\n".join(exposure_lines(EmbeddedServer(MODELS, **serve_options("127.0.0.1")), Path("/k")))
    assert "this machine only" in local and "EVERY" not in local and "WARNING" not in local and "/k" in local
