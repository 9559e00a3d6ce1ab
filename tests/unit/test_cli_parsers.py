"""The ``clara-napari`` parsers: each sub-command reaches its own module's handler, the options a
Triton server and a PACS share come from one helper, and the bench never loads the CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

from clara_napari.cli import build_parser
from clara_napari.cli.options import parse_headers, server_options
from clara_napari.cli.run import parse_run_args

COMMANDS = {"run": ["run", "--input", "in"], "sample": ["sample"], "apps": ["apps"], "new-app": ["new-app", "x"],
            "models": ["models"], "serve": ["serve"], "bench": ["bench", "--quick"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_sub_command_reaches_its_module(command):
    args = build_parser().parse_args(COMMANDS[command])
    module = {"new-app": "apps"}.get(command, command)
    assert args.command == command
    assert args.handler.__module__ == f"clara_napari.cli.{module}"


def test_server_and_pacs_options_have_the_same_shape(monkeypatch):
    monkeypatch.delenv("CLARA_NAPARI_HEADERS", raising=False)
    monkeypatch.setenv("CLARA_NAPARI_PACS_HEADERS", "X-From-Env=1")
    args = build_parser().parse_args([
        "run", "--input", "in", "--server", "grpcs://triton:8001", "--header", "Authorization=Bearer t",
        "--ssl-ca", "ca.pem", "--ssl-cert", "c.pem", "--ssl-key", "k.pem",
        "--pacs", "https://pacs/dicom-web", "--study", "1.2", "--pacs-header", "Authorization=Basic p",
        "--pacs-ssl-ca", "pca.pem", "--pacs-ssl-cert", "pc.pem", "--pacs-ssl-key", "pk.pem",
        "--protocol", "grpc", "--no-shm", "--timeout", "5", "--retries", "0"])
    assert server_options(args) == {"protocol": "grpc", "shared_memory": False, "timeout_s": 5.0, "retries": 0,
                                    "headers": {"Authorization": "Bearer t"}, "ssl_ca": "ca.pem",
                                    "ssl_cert": "c.pem", "ssl_key": "k.pem"}
    assert (args.pacs_ssl_ca, args.pacs_ssl_cert, args.pacs_ssl_key) == ("pca.pem", "pc.pem", "pk.pem")
    assert parse_headers(args.pacs_header, env="CLARA_NAPARI_PACS_HEADERS") == {
        "X-From-Env": "1", "Authorization": "Basic p"}


def test_sample_parses_its_run_with_runs_own_parser():
    args = parse_run_args(["--app", "brain_extraction_t1", "--input", "in", "--overwrite", "--server", "local"])
    assert (args.app, args.input, args.overwrite, args.server) == ("brain_extraction_t1", "in", True, ["local"])
    with pytest.raises(SystemExit):
        parse_run_args(["run", "--input", "in"])   # no sub-command here: "run" is not an argument of run


def test_the_bench_does_not_load_the_cli():
    code = ("import sys, clara_napari.bench, clara_napari.bench.memory, clara_napari.bench.command; "
            "print(sorted(m for m in sys.modules if m.startswith('clara_napari.cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_bench_is_the_bench_command():
    done = subprocess.run([sys.executable, "-m", "clara_napari.bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: clara-napari bench") and "--growth" in done.stdout
