"""Issue 10, app and output folders: no code from an app folder, no lost or misplaced output.

Items 2 (logging_config.json and every other file of an app), 4 (colliding output names),
5 (concurrent runs into one folder), 8 (output/publish/logs in the input), 9 (umask) and 12
(stale partials, a volume's outputs land together). Everything runs the real CLI / operator with
the local runtime (``--server local``, onnxruntime in process) on a real CT crop.

The tests of this issue that kill or race real CLI processes, or start Triton; the rest are in tests/unit/test_security_outputs.py.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.atomic import remove_stale_partials

from helpers.security_outputs import (
    ENV,
    KILLED_WRITER,
    hidden,
    run_args,
    write_inputs,
)

ROOT = Path(__file__).resolve().parents[2]


# -- item 5: concurrent runs into one folder -----------------------------------------------------------
def test_concurrent_runs_never_replace_each_other(tmp_path, ct):
    """Three real processes, three different inputs of one name, one output and publish folder.

    Whatever the interleaving, exactly one run wins and the output and bundle are all its own
    (on main a loser's outputs replaced the winner's before its publish check failed). The exact
    race at the rename is forced in ``test_no_overwrite_holds_at_the_rename``.
    """
    procs, sources = [], []
    for i in range(3):
        sources.append(write_inputs(tmp_path / f"in{i}", ct, ["ct"] if i == 0 else ["x"] * i + ["ct"])["ct"])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "clara_napari", "run", "--app", "lung_ct", "--server", "local",
             "--input", str(sources[-1]), "--output", str(tmp_path / "out"), "--publish", str(tmp_path / "pub"),
             "--logs", str(tmp_path / "logs")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    winners = [i for i, (code, _, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    for i, (code, _, err) in enumerate(results):
        if i not in winners:
            assert code == 1 and "exists already" in err, err
    source = cn.read_volume(sources[winners[0]])
    out = cn.read_volume(tmp_path / "out" / "ct.mhd")
    assert out.same_grid(source)  # the winner's own output, header and data
    assert np.array_equal(cn.read_volume(tmp_path / "pub" / "ct.mhd").array, source.array)
    assert np.array_equal(cn.read_volume(tmp_path / "pub" / "ct.out.mhd").array, out.array)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.mhd", "ct.raw"]
    assert not hidden(tmp_path / "out") and not hidden(tmp_path / "pub")


def test_partials_of_a_killed_process_do_not_block_the_next_run(tmp_path, ct):
    out, pub = tmp_path / "out", tmp_path / "pub"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), str(pub)], env=ENV, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert len(hidden(out)) >= 1 and len(hidden(pub)) >= 1  # what a kill while writing leaves
    # a live process's staging folder is never touched
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f".clara-napari-{sleeper.pid}-abc.part"
        live.mkdir()
        write_inputs(tmp_path / "in", ct, ["ct"])
        result = subprocess.run([sys.executable, "-m", "clara_napari", *run_args(tmp_path, tmp_path / "in")],
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert hidden(out) == [live] and not hidden(pub)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_partials(out) == [live] and not hidden(out)
    assert (pub / "config.meta").is_file() and (out / "ct.raw").read_bytes() != b"half of the data"


@pytest.mark.triton
def test_model_program_is_fixed_code_and_paths_are_data(tmp_path):
    """The python-backend program serving an app's model is the package's own file, copied as it is;
    the model's path (which an app folder or a link can choose: here one that would close a
    docstring and run a command) reaches it only as data, a config.pbtxt parameter."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from clara_napari.core.triton.embedded import EmbeddedServer
    from clara_napari.core.triton_model import MODEL_PROGRAM

    evil = tmp_path / 'x"""\nimport os; os.system("touch PWNED")\n"""\'\'\''
    repo = evil / "models"
    shutil.copytree(DATA_ROOT / "sample_data" / "models" / "lung_air_density", repo / "lung_air_density")
    with EmbeddedServer(repo) as server:
        folder = server.workdir / "models" / "lung_air_density"
        assert (folder / "1" / "model.py").read_bytes() == Path(MODEL_PROGRAM).read_bytes()
        config = text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), mc.ModelConfig())
        assert config.parameters["clara_napari_model_folder"].string_value == str(repo / "lung_air_density")
        assert server.model_names() == ["lung_air_density"]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


def test_cli_killed_mid_run_leaves_whole_volumes_only(tmp_path, ct):
    """SIGKILL the real CLI once its first volume landed: once the stale partials are dealt with
    (as the next run starts) every volume is whole (output and bundle) or absent, and the next run
    without --overwrite finishes the rest."""
    import time

    names = ["v0", "v1", "v2", "v3"]
    write_inputs(tmp_path / "in", ct, names)
    command = [sys.executable, "-m", "clara_napari", *run_args(tmp_path, tmp_path / "in")]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "pub").glob("*/config.meta")) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    # what the next run does first (a kill inside the few-millisecond commit is finished here)
    remove_stale_partials(tmp_path / "out", tmp_path / "pub", *(tmp_path / "pub").iterdir())
    landed = [n for n in names if (tmp_path / "out" / f"{n}.mhd").exists()]
    assert landed, "the first volume had not landed before the deadline"
    for name in names:
        whole = [(tmp_path / "out" / f"{name}{ext}").exists() for ext in (".mhd", ".raw")] + \
                [(tmp_path / "pub" / name / f).exists() for f in ("config.meta", f"{name}.out.raw", f"{name}.raw")]
        assert all(whole) or not any(whole), (name, whole)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == (1 if landed else 0), result.stderr
    assert result.stderr.count("exists already") == len(landed)
    for name in names:
        assert cn.read_volume(tmp_path / "out" / f"{name}.mhd").array.dtype == np.uint8
        assert (tmp_path / "pub" / name / "config.meta").is_file()
    assert not hidden(tmp_path / "out") and not hidden(tmp_path / "pub")
