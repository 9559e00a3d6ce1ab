"""Issue 10, app and output folders: no code from an app folder, no lost or misplaced output.

Items 2 (logging_config.json and every other file of an app), 4 (colliding output names),
5 (concurrent runs into one folder), 8 (output/publish/logs in the input), 9 (umask) and 12
(stale partials, a volume's outputs land together). Everything runs the real CLI / operator with
the local runtime (``--server local``, onnxruntime in process) on a real CT crop.

The tests that kill or race real CLI processes, or start Triton, are in tests/integration/test_security_outputs_processes.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.atomic import Transaction, current_umask, remove_stale_partials
from clara_napari.core.errors import ConfigError, OutputError, VolumeError
from clara_napari.core.logging_config import check_logging_config
from clara_napari.core.output_plan import distinct_stems, name_hash

from helpers.security_outputs import (
    ENV,
    HOSTILE_LOGGING,
    KILLED_COMMIT,
    PYTHON_MODEL_CONFIG,
    crop,
    hidden,
    run_args,
    write_inputs,
)

ROOT = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lung_app(folder: Path) -> Path:
    assert main(["new-app", str(folder), "--from", "lung_ct"]) == 0
    return folder


@pytest.mark.parametrize("config, json_path", HOSTILE_LOGGING, ids=[p or "top" for _, p in HOSTILE_LOGGING])
def test_logging_config_naming_code_is_refused(tmp_path, config, json_path):
    marker = tmp_path / "MARKER"
    raw = json.loads(json.dumps(config).replace("{marker}", str(marker)))
    with pytest.raises(ConfigError) as info:
        check_logging_config(raw, file="app/logging_config.json", logs=tmp_path / "logs")
    assert info.value.json_path == json_path
    assert str(info.value).startswith(f"app/logging_config.json: {json_path}")
    assert "\n" not in str(info.value) and not marker.exists()


def test_logging_config_shell_command_never_runs_cli(tmp_path, ct, capsys, restore_root_logging):
    """The reproduced attack: ``"()": "subprocess.getoutput"`` in an app's logging_config.json."""
    app = lung_app(tmp_path / "app")
    marker = tmp_path / "PWNED"
    (app / "logging_config.json").write_text(json.dumps({
        "version": 1, "handlers": {"h": {"()": "subprocess.getoutput", "cmd": f"touch {marker}"}},
        "root": {"handlers": ["h"], "level": "INFO"}}))
    write_inputs(tmp_path / "in", ct, ["ct"])
    args = run_args(tmp_path, tmp_path / "in")
    args[args.index("lung_ct")] = str(app)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logging_config.json" in err[0] and "handlers.h.()" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()  # refused before any folder


def test_safe_logging_config_is_applied(tmp_path):
    logs = tmp_path / "logs"
    config = check_logging_config({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "{asctime} {levelname} {name}: {message}", "style": "{", "datefmt": "%H:%M"}},
        "handlers": {"err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "level": "WARNING"},
                     "file": {"class": "logging.handlers.RotatingFileHandler", "filename": "app.log",
                              "maxBytes": 100000, "backupCount": 2, "formatter": "plain", "mode": "a"}},
        "loggers": {"clara_napari": {"level": "DEBUG", "handlers": ["file"], "propagate": False}},
        "root": {"level": "info", "handlers": ["err"]}}, file="logging_config.json", logs=logs)
    assert config["handlers"]["file"]["filename"] == str((logs / "app.log").resolve())
    assert config["handlers"]["err"]["stream"] is sys.stderr


def _link_app_file(tmp_path: Path, name: str, secret: Path) -> Path:
    app = lung_app(tmp_path / "app")
    (app / name).unlink(missing_ok=True)
    (app / name).symlink_to(secret)
    return app


@pytest.mark.parametrize("name", ["config_render.json", "logging_config.json"])
def test_app_file_linking_outside_the_app_is_refused(tmp_path, ct, capsys, name, restore_root_logging):
    """config_render.json is copied into every bundle: a link to a foreign file would publish it."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"private_key": "SECRET-BYTES"}')
    app = _link_app_file(tmp_path, name, secret)
    write_inputs(tmp_path / "in", ct, ["ct"])
    args = run_args(tmp_path, tmp_path / "in")
    args[args.index("lung_ct")] = str(app)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert name in err and "outside the app folder" in err and "SECRET-BYTES" not in err
    published = b"".join(p.read_bytes() for p in (tmp_path / "pub").rglob("*") if p.is_file()) \
        if (tmp_path / "pub").exists() else b""
    assert b"SECRET-BYTES" not in published


def test_app_config_linking_outside_the_app_is_refused(tmp_path, capsys):
    app = lung_app(tmp_path / "app")
    foreign = tmp_path / "foreign.json"
    (app / "config_inference.json").rename(foreign)
    (app / "config_inference.json").symlink_to(foreign)
    assert main(["run", "--app", str(app), "--server", "local", "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "config_inference.json" in err and "outside the app folder" in err
    from clara_napari.core.apps import resolve_app

    assert resolve_app(foreign).config_path == foreign.resolve()  # a config file named directly: the user's choice


def test_render_config_must_be_json(tmp_path, ct, capsys):
    app = lung_app(tmp_path / "app")
    (app / "config_render.json").write_text("#!/bin/sh\nrm -rf ~\n")
    write_inputs(tmp_path / "in", ct, ["ct"])
    args = run_args(tmp_path, tmp_path / "in")
    args[args.index("lung_ct")] = str(app)
    assert main(args) == 2
    assert "config_render.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_writer_write_path_outside_output_is_refused(tmp_path, ct, capsys):
    app = lung_app(tmp_path / "app")
    config = json.loads((app / "config_inference.json").read_text())
    config["writers"][0].setdefault("args", {})["write_path"] = str(tmp_path / "elsewhere")
    (app / "config_inference.json").write_text(json.dumps(config))
    write_inputs(tmp_path / "in", ct, ["ct"])
    args = run_args(tmp_path, tmp_path / "in")
    args[args.index("lung_ct")] = str(app)
    assert main(args) == 2
    assert "writers[0].args.write_path" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


# -- item 4: colliding output names ------------------------------------------------------------------
def test_colliding_names_get_distinct_predictable_outputs(tmp_path, ct, capsys):
    names = ["a b", "a*b", "a?b", "a_b", "A", "a"]
    sources = write_inputs(tmp_path / "in", ct, names)
    assert main(run_args(tmp_path, tmp_path / "in", "--overwrite")) == 0
    out = capsys.readouterr().out
    expected = {"a b": f"a_b-{name_hash('a b.nii.gz')}", "a*b": f"a_b-{name_hash('a*b.nii.gz')}",
                "a?b": f"a_b-{name_hash('a?b.nii.gz')}", "a_b": "a_b",
                "A": f"A-{name_hash('A.nii.gz')}", "a": f"a-{name_hash('a.nii.gz')}"}
    assert len({v.casefold() for v in expected.values()}) == len(names)
    for name, stem in expected.items():
        assert f"{name}.nii.gz: wrote {stem}.mhd" in out
        source = cn.read_volume(sources[name])
        assert cn.read_volume(tmp_path / "out" / f"{stem}.mhd").same_grid(source)  # its own input's grid
        density = cn.read_volume(tmp_path / "pub" / stem / f"{stem}.mhd")
        assert np.array_equal(density.array, source.array)
    assert len(list((tmp_path / "out").iterdir())) == 2 * len(names)


def test_collision_planning_api_and_refusal(tmp_path):
    def files(stem):
        return [tmp_path / "out" / f"{stem}.raw", tmp_path / "out" / f"{stem}.mhd",
                tmp_path / "out" / f"{stem}.seg.mhd"]

    stems = distinct_stems([Path("x/CT.nii"), Path("x/ct.nii"), Path("x/b.nii")], files)
    assert stems[Path("x/b.nii")] == "b"
    assert stems[Path("x/CT.nii")].casefold() != stems[Path("x/ct.nii")].casefold()
    # a dotted name that writes what another input's second writer writes ("a" + ".seg")
    stems = distinct_stems([Path("a.nii"), Path("a.seg.nii")], files)
    assert {s.casefold() for s in stems.values()} == {f"a-{name_hash('a.nii')}", f"a.seg-{name_hash('a.seg.nii')}"}
    # whatever cannot be separated is refused with the list, never overwritten
    with pytest.raises(OutputError, match="a.nii, b.nii"):
        distinct_stems([Path("a.nii"), Path("b.nii")], lambda stem: [tmp_path / "same.mhd"])


def test_no_overwrite_holds_at_the_rename(tmp_path):
    """A file that appears after the checks is still never replaced, and nothing of the volume lands."""
    out = tmp_path / "out"
    with Transaction(overwrite=False) as txn:
        txn.path(out / "v.raw").write_bytes(b"new data")
        txn.path(out / "v.nhdr").write_text("new header")
        with pytest.raises(VolumeError, match="two outputs of this volume"):
            txn.path(out / "V.RAW")  # one name twice (ignoring case): the second would replace the first
        (out / "v.nhdr").write_text("the other run's header")  # a concurrent run won the race
        with pytest.raises(VolumeError, match="v.nhdr: exists already"):
            txn.commit()
    assert (out / "v.nhdr").read_text() == "the other run's header"
    assert sorted(p.name for p in out.iterdir()) == ["v.nhdr"]  # v.raw (placed first) taken back


# -- item 8: output, publish or logs in the input -----------------------------------------------------------
@pytest.mark.parametrize("role, where", [("output", "in"), ("output", "in/sub"), ("publish", "in"),
                                         ("publish", "in/pub"), ("logs", "in/logs"), ("logs", "."),
                                         ("output", "link"), ("publish", "link/pub")])
def test_folders_in_or_around_the_input_are_refused(tmp_path, ct, capsys, role, where):
    write_inputs(tmp_path / "in", ct, ["ct"])
    (tmp_path / "link").symlink_to(tmp_path / "in")
    before = digest(tmp_path / "in")
    args = run_args(tmp_path, tmp_path / "in", "--overwrite")
    flag = f"--{role}"
    args[args.index(flag) + 1] = str(tmp_path / where)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the {role} folder" in err[0] and "refused" in err[0]
    assert digest(tmp_path / "in") == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists() and not (tmp_path / "pub").exists()


def test_single_file_input_folder_checks_api(tmp_path, ct):
    from clara_napari.core.apps import resolve_app
    from clara_napari.core.operator import RunOptions, run

    source = write_inputs(tmp_path / "in", ct, ["ct"])["ct"]
    with pytest.raises(OutputError, match="contains the input"):
        run(RunOptions(app=resolve_app("lung_ct"), input=source, output=tmp_path / "in", server="local"))
    with pytest.raises(OutputError, match="publish folder is the output folder"):
        run(RunOptions(app=resolve_app("lung_ct"), input=source, output=tmp_path / "o", publish=tmp_path / "o",
                       server="local"))


# -- item 9: the umask is honoured ---------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o077, 0o022])
def test_outputs_honour_the_umask(tmp_path, ct, mask, restore_root_logging):
    write_inputs(tmp_path / "in", ct, ["a", "b"])
    previous = os.umask(mask)
    try:
        assert current_umask() == mask
        assert main(run_args(tmp_path, tmp_path / "in")) == 0
    finally:
        os.umask(previous)
    written = [p for d in ("out", "pub", "logs") for p in [tmp_path / d, *(tmp_path / d).rglob("*")]]
    assert len([p for p in written if p.is_file()]) == 4 + 12 + 1
    for path in written:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == want, f"{path}: {oct(path.stat().st_mode)}"


def test_unwritable_publish_folder_leaves_no_output(tmp_path, ct, capsys):
    write_inputs(tmp_path / "in", ct, ["ct"])
    (tmp_path / "pub").write_text("a file where the publish folder should be")
    capsys.readouterr()
    assert main(run_args(tmp_path, tmp_path / "in")) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "pub" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_publish_failing_at_the_commit_restores_the_previous_outputs(tmp_path, ct, capsys):
    """--overwrite, and the bundle's last file cannot be put in place: the old outputs come back."""
    write_inputs(tmp_path / "in", ct, ["ct"])
    assert main(run_args(tmp_path, tmp_path / "in")) == 0
    (tmp_path / "in" / "ct.nii.gz").unlink()
    write_inputs(tmp_path / "in", ct, ["x", "ct"])  # another CT under the same name
    (tmp_path / "in" / "x.nii.gz").unlink()
    before_out, before_pub = digest(tmp_path / "out"), digest(tmp_path / "pub")
    (tmp_path / "pub" / "config.meta").unlink()
    (tmp_path / "pub" / "config.meta").mkdir()  # cannot be replaced by a file
    del before_pub["config.meta"]
    capsys.readouterr()
    assert main(run_args(tmp_path, tmp_path / "in", "--overwrite")) == 1
    assert "FAILED" in capsys.readouterr().err
    assert digest(tmp_path / "out") == before_out
    assert digest(tmp_path / "pub") == before_pub
    assert not hidden(tmp_path / "out") and not list(hidden(tmp_path / "pub"))


def test_app_python_backend_model_is_not_run_without_trust(tmp_path, ct, capsys, monkeypatch):
    """An app's models/ with a python-backend model: the embedded server would run its model.py."""
    from clara_napari.core.apps import TRUST_CODE_ENV, refuse_python_models

    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    monkeypatch.delenv("NVIDIA_CLARA_TRTISURI", raising=False)
    app = lung_app(tmp_path / "app")
    (app / "models").unlink()
    model = app / "models" / "lung_air_density"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(PYTHON_MODEL_CONFIG)
    marker = tmp_path / "PWNED"
    (model / "1" / "model.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    write_inputs(tmp_path / "in", ct, ["ct"])
    args = run_args(tmp_path, tmp_path / "in")
    args[args.index("--server"):args.index("--server") + 2] = []  # the embedded server
    args[args.index("lung_ct")] = str(app)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "python-backend model" in err and TRUST_CODE_ENV in err and "config.pbtxt" in err
    assert not marker.exists()
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    refuse_python_models(app / "models")  # trusted on purpose: allowed


@pytest.mark.parametrize("location", ["ABS", "../secret.bin", "link.bin"])
def test_onnx_external_data_cannot_read_outside_the_model_folder(tmp_path, location):
    """An app's ONNX model may name external data files; the runtime we rely on refuses any that
    leave the model's folder (absolute, ``..`` or a link out)."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    (tmp_path / "secret.bin").write_bytes(np.float32([7.0]).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "link.bin").symlink_to(tmp_path / "secret.bin")
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", str(tmp_path / "secret.bin") if location == "ABS" else location), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(Exception, match="External data path"):
        ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert onnx is not None


def test_publish_bundle_never_writes_over_its_source(tmp_path, ct):
    """Saving a bundle into the folder of the MetaImage it came from, under the same name (napari's
    "save as publish bundle"): refused, the source left as it was."""
    from clara_napari.core.apps import resolve_app
    from clara_napari.core.pipeline import Segmentation
    from clara_napari.core.publish import write_publish_bundle

    source = cn.write_volume(crop(ct, 0), tmp_path / "ct.mhd")
    before = digest(tmp_path)
    image = cn.read_volume(source)
    labels = image.with_array((image.array > 0).astype(np.uint8), path=None)
    from clara_napari.core.components import VolumeWriter

    segmentation = Segmentation(source=image, outputs=[(VolumeWriter(), labels)], model="m")
    with pytest.raises(VolumeError, match="refusing to write over the input"):
        write_publish_bundle(tmp_path, segmentation, resolve_app("lung_ct"), overwrite=True)
    assert digest(tmp_path) == before and not hidden(tmp_path)


def test_bundle_folder_that_is_the_output_folder_gets_another_name(tmp_path, ct, capsys):
    """--output P/out --publish P: the bundle of an input named ``out`` would land in P/out/ and its
    density ``out.mhd`` would be the segmentation's name there; that input gets its hash instead."""
    sources = write_inputs(tmp_path / "in", ct, ["out", "b"])
    args = ["run", "--app", "lung_ct", "--server", "local", "--input", str(tmp_path / "in"), "--output",
            str(tmp_path / "P" / "out"), "--publish", str(tmp_path / "P"), "--logs", str(tmp_path / "logs")]
    assert main(args) == 0
    stem = f"out-{name_hash('out.nii.gz')}"
    assert f"out.nii.gz: wrote {stem}.mhd" in capsys.readouterr().out
    segmentation = cn.read_volume(tmp_path / "P" / "out" / f"{stem}.mhd")
    assert segmentation.array.dtype == np.uint8 and segmentation.same_grid(cn.read_volume(sources["out"]))
    density = cn.read_volume(tmp_path / "P" / stem / f"{stem}.mhd")
    assert np.array_equal(density.array, cn.read_volume(sources["out"]).array)


def test_stale_partials_are_removed_where_the_run_does_not_write(tmp_path, ct, capsys):
    """A kill during the commit leaves a staging folder beside a complete volume; the next run
    (which writes nothing there: the volume exists) still removes it."""
    write_inputs(tmp_path / "in", ct, ["a", "b"])
    assert main(run_args(tmp_path, tmp_path / "in", publish=True)) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    stale = [tmp_path / "pub" / "a" / f".clara-napari-{int(dead.stdout)}-x1.part",
             tmp_path / "out" / f".clara-napari-{int(dead.stdout)}-x2.part"]
    for folder in stale:
        (folder / ".replaced").mkdir(parents=True)
        (folder / "a.raw").write_bytes(b"partial")
    capsys.readouterr()
    assert main(run_args(tmp_path, tmp_path / "in", publish=True)) == 1  # both exist already
    assert capsys.readouterr().err.count("exists already") == 2
    assert not any(p.exists() for p in stale)


def test_a_commit_killed_half_way_is_finished_by_the_next_run(tmp_path):
    """SIGKILL between the output and the bundle: the journal lets the next run complete the volume
    (a volume is never left with its output but without its bundle)."""
    out, pub = tmp_path / "out", tmp_path / "pub"
    killed = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(out), str(pub)], env=ENV, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ct.nhdr", "ct.raw"]
    assert not [p for p in pub.iterdir() if not p.name.startswith(".")]
    # a planted journal entry that would move a foreign file is ignored
    journal = next(out.glob(".clara-napari-*.part")) / ".commit.json"
    data = json.loads(journal.read_text())
    (tmp_path / "foreign").write_text("not ours")
    data["moves"].append([str(tmp_path / "foreign"), str(pub / "foreign")])
    journal.write_text(json.dumps(data))
    removed = remove_stale_partials(out, pub)
    assert len(removed) == 2 and not hidden(out) and not hidden(pub)
    assert (pub / "ct.raw").read_bytes() == b"density" and (pub / "config.meta").read_text() == "meta"
    assert (out / "ct.nhdr").read_text() == "header" and not (pub / "foreign").exists()
    assert (tmp_path / "foreign").read_text() == "not ours"
