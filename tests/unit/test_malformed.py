"""Malformed and hostile inputs: every case fails alone, clearly, and leaves nothing behind.

A corpus of broken inputs is generated here. Each case goes through the CLI (non-zero exit, one
line on stderr naming the file, no traceback, nothing in output or publish, the input folder
byte-for-byte unchanged) and through the Python API (a ClaraNapariError naming the file).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.errors import ClaraNapariError
from clara_napari.core.volume import Volume, write_volume

from helpers.hostile_inputs import (
    APP,
    assert_nothing_written,
    digest,
    needs_root,
    run_without_dac_override,
    shared_tmp,
    write_mhd_header,
)

ROOT = Path(__file__).resolve().parents[2]


def good_volume(shape=(12, 40, 40)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-1000, 400, size=shape).astype(np.int16), spacing=(1.5, 1.5, 5.0))


def _mhd(folder: Path, raw_bytes: int | None = 40 * 40 * 12 * 2, **fields) -> Path:
    header = folder / "case.mhd"
    write_mhd_header(header, **fields)
    if raw_bytes is not None:
        (folder / "case.raw").write_bytes(b"\x01" * raw_bytes)
    return header


def _raw_image(folder: Path, name: str, array: np.ndarray, vector: bool = False) -> Path:
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def _dicom(folder: Path, uid: str, prefix: str = "s") -> None:
    from helpers.dicom_series import write_dicom_series

    write_dicom_series(folder, uid, np.zeros((3, 8, 8), np.int16), prefix=prefix)


# name → builder(folder) creating the broken input inside ``folder``; returns the name the error must mention
CASES: dict[str, Callable[[Path], str]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@case("truncated_raw")
def _(f):
    return _mhd(f, raw_bytes=1000).name


@case("missing_raw")
def _(f):
    return _mhd(f, raw_bytes=None).name


@case("huge_dims")
def _(f):
    return _mhd(f, DimSize="100000 100000 100000").name


@case("negative_dims")
def _(f):
    return _mhd(f, DimSize="40 -40 12").name


@case("non_numeric_dims")
def _(f):
    return _mhd(f, DimSize="forty 40 12").name


@case("unknown_element_type")
def _(f):
    return _mhd(f, ElementType="MET_QUATERNION").name


@case("data_file_outside_folder")
def _(f):
    (f.parent / "outside.raw").write_bytes(b"\0" * (40 * 40 * 12 * 2))
    return _mhd(f, raw_bytes=None, ElementDataFile="../outside.raw").name


@case("data_file_absolute")
def _(f):
    return _mhd(f, raw_bytes=None, ElementDataFile="/etc/passwd").name


@case("binary_header")
def _(f):
    (f / "case.mhd").write_bytes(bytes(range(256)) * 4)
    return "case.mhd"


@case("text_as_nifti_gz")
def _(f):
    (f / "notes.nii.gz").write_text("patient notes, not an image\n" * 20)
    return "notes.nii.gz"


@case("random_bytes_nii")
def _(f):
    (f / "noise.nii").write_bytes(np.random.default_rng(1).bytes(4096))
    return "noise.nii"


@case("random_bytes_nrrd")
def _(f):
    (f / "noise.nrrd").write_bytes(np.random.default_rng(2).bytes(4096))
    return "noise.nrrd"


@case("random_bytes_mha")
def _(f):
    (f / "noise.mha").write_bytes(np.random.default_rng(3).bytes(4096))
    return "noise.mha"


@case("empty_nii_gz")
def _(f):
    (f / "empty.nii.gz").write_bytes(b"")
    return "empty.nii.gz"


@case("empty_mhd")
def _(f):
    (f / "empty.mhd").write_bytes(b"")
    return "empty.mhd"


@case("corrupt_gzip")
def _(f):
    (f / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + np.random.default_rng(4).bytes(2000))
    return "bad.nii.gz"


@case("truncated_nii_gz")
def _(f):
    write_volume(good_volume(), f / "cut.nii.gz")
    data = (f / "cut.nii.gz").read_bytes()
    (f / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return "cut.nii.gz"


@case("truncated_nii")
def _(f):
    write_volume(good_volume(), f / "cut.nii")
    data = (f / "cut.nii").read_bytes()
    (f / "cut.nii").write_bytes(data[: len(data) // 3])
    return "cut.nii"


@case("nifti_header_lies_huge")
def _(f):
    write_volume(good_volume(), f / "lie.nii")
    data = bytearray((f / "lie.nii").read_bytes())
    data[42:48] = np.array([30000, 30000, 30000], np.int16).tobytes()  # dim[1..3]
    (f / "lie.nii").write_bytes(bytes(data))
    return "lie.nii"


@case("nrrd_header_lies")
def _(f):
    (f / "lie.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1000 1000 1000\n"
                                 b"encoding: raw\nendian: little\n\n" + b"\0" * 1000)
    return "lie.nrrd"


@case("two_d_mha")
def _(f):
    return _raw_image(f, "flat.mha", np.zeros((20, 20), np.int16)).name


@case("single_slice_nii")
def _(f):
    return _raw_image(f, "slice.nii.gz", np.zeros((1, 20, 20), np.int16)).name


@case("four_d_nii")
def _(f):
    image = sitk.Image([4, 4, 4, 3], sitk.sitkInt16)
    sitk.WriteImage(image, str(f / "time.nii.gz"))
    return "time.nii.gz"


@case("vector_pixels")
def _(f):
    return _raw_image(f, "rgb.mha", np.zeros((5, 6, 7, 3), np.uint8), vector=True).name


@case("multichannel_mhd_header")
def _(f):
    return _mhd(f, raw_bytes=40 * 40 * 12 * 2 * 3, ElementNumberOfChannels="3").name


@case("all_nan")
def _(f):
    return _raw_image(f, "nan.mha", np.full((5, 6, 7), np.nan, np.float32)).name


@case("infinite_voxel")
def _(f):
    array = np.zeros((5, 6, 7), np.float32)
    array[2, 3, 4] = np.inf
    return _raw_image(f, "inf.nrrd", array).name


@case("compressed_garbage_zraw")
def _(f):
    header = f / "z.mhd"
    write_mhd_header(header, CompressedData="True", ElementDataFile="z.zraw")
    (f / "z.zraw").write_bytes(np.random.default_rng(5).bytes(3000))
    return "z.mhd"


@case("garbage_dcm_files")
def _(f):
    series = f / "series"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(i).bytes(500))
    return "series"


@case("mixed_dicom_series")
def _(f):
    series = f / "study"
    series.mkdir()
    _dicom(series, "1.2.826.0.1.3680043.2.1125.1", "a")
    _dicom(series, "1.2.826.0.1.3680043.2.1125.2", "b")
    return "study"


@case("empty_folder")
def _(f):
    return f.name


@case("only_unsupported_files")
def _(f):
    (f / "readme.txt").write_text("hello")
    (f / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return f.name


FOLDER_LEVEL = {"empty_folder", "only_unsupported_files"}


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_refuses_cleanly(tmp_path, name, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    culprit = CASES[name](inputs)
    before = digest(tmp_path)
    code = main(["run", "--app", APP, "--server", "local", "--input", str(inputs), "--output", str(tmp_path / "out"),
                 "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1, err
    assert culprit in lines[0] and "Traceback" not in err
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")
    after = digest(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("input")} == \
           {k: v for k, v in before.items() if k.startswith("input")}


@pytest.mark.parametrize("name", sorted(set(CASES) - FOLDER_LEVEL))
def test_api_refuses_cleanly(tmp_path, name):
    inputs = tmp_path / "input"
    inputs.mkdir()
    culprit = CASES[name](inputs)
    target = inputs / culprit
    with pytest.raises(ClaraNapariError) as info:
        cn.segment(target, app=APP, server="local")
    assert culprit in str(info.value) and "\n" not in str(info.value)


def test_good_volumes_still_processed_beside_bad_ones(tmp_path, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    bad = [CASES[n](inputs) for n in ("text_as_nifti_gz", "two_d_mha", "all_nan", "random_bytes_nrrd")]
    write_volume(good_volume(), inputs / "zz_good.nii.gz")
    code = main(["run", "--app", APP, "--server", "local", "--input", str(inputs), "--output", str(tmp_path / "out"),
                 "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["zz_good.mhd", "zz_good.raw"]
    failed = [ln for ln in err.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == len(bad) and all(any(b in ln for ln in failed) for b in bad)


# -- permissions and full disks (real ones: as an unprivileged user, on a tiny tmpfs) --------


@needs_root
def test_unreadable_input(capsys):
    with shared_tmp() as tmp:
        inputs = tmp / "input"
        inputs.mkdir(mode=0o777)
        path = write_volume(good_volume(), inputs / "secret.nii.gz")
        path.chmod(0)
        result = run_without_dac_override(["run", "--app", APP, "--server", "local", "--input", str(inputs), "--output",
                                str(tmp / "out"), "--no-publish", "--logs", str(tmp / "logs")])
        assert result.returncode != 0
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "secret.nii.gz" in lines[0] and "permission denied" in lines[0].lower(), result.stderr
        assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())


@needs_root
def test_unwritable_output_folder():
    with shared_tmp() as tmp:
        inputs = tmp / "input"
        inputs.mkdir(mode=0o777)
        write_volume(good_volume(), inputs / "ct.nii.gz").chmod(0o644)
        out = tmp / "out"
        out.mkdir()
        out.chmod(0o555)  # read-only, and the CLI runs without the override
        result = run_without_dac_override(["run", "--app", APP, "--server", "local", "--input", str(inputs), "--output",
                                str(out), "--no-publish", "--logs", str(tmp / "logs")])
        assert result.returncode != 0
        failed = [ln for ln in result.stderr.splitlines() if ln.startswith("FAILED")]
        assert len(failed) == 1 and str(out) in failed[0] and "Traceback" not in result.stderr, result.stderr
        assert not list(out.iterdir())


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "300k"):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk(tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_volume(good_volume((12, 200, 200)), inputs / "ct.nii.gz")   # 960 kB of labels: more than 300 kB
    before = digest(inputs)
    out = tmp_path / "small"
    with tiny_filesystem(out) as mounted:
        if not mounted:  # no tmpfs allowed here: fail the write call itself with ENOSPC
            import errno

            real_write = sitk.WriteImage

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(sitk, "WriteImage", full)
            del real_write
        code = main(["run", "--app", APP, "--server", "local", "--input", str(inputs), "--output", str(out),
                     "--publish", str(out / "pub"), "--logs", str(tmp_path / "logs")])
        err = capsys.readouterr().err
        assert code == 1
        failed = [ln for ln in err.splitlines() if ln.startswith("FAILED")]
        assert len(failed) == 1 and "ct.mhd" in failed[0] and "Traceback" not in err, err
        leftovers = [p for p in out.rglob("*") if p.is_file()]
        assert not leftovers, leftovers
    assert digest(inputs) == before


def test_output_names_cannot_escape(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_volume(good_volume(), inputs / "evil name;$(x).nii.gz")
    write_volume(good_volume(), inputs / "...nii.gz")   # stem '..'
    args = ["run", "--app", APP, "--server", "local", "--output", str(tmp_path / "out"), "--no-publish",
            "--logs", str(tmp_path / "logs")]
    assert main(args + ["--input", str(inputs)]) == 0                       # the hidden one is skipped
    assert main(args + ["--input", str(inputs / "...nii.gz")]) == 0         # named directly
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    # a cleaned name carries the start of the original name's SHA-256 (distinct from a_b's own output)
    from clara_napari.core.output_plan import name_hash

    evil, dots = f"evil_name___x_-{name_hash('evil name;$(x).nii.gz')}", f"volume-{name_hash('...nii.gz')}"
    assert names == sorted([f"{evil}.mhd", f"{evil}.raw", f"{dots}.mhd", f"{dots}.raw"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "logs", "out"]
