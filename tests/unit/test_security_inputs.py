"""Issue 10, input files: no read outside the input's folder, no garbage, no NaN turned into 0.

Every hostile input goes through the CLI (non-zero exit, one line naming the file, no
traceback, nothing written, input unchanged) and through the API (a VolumeError naming the file).
A file outside the input folder holds the byte 0x5A so that a leak into any output is visible.
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.errors import VolumeError
from clara_napari.core.volume import read_volume, write_volume

from helpers.hostile_inputs import APP, assert_nothing_written, digest, write_mhd_header

SLICE = 40 * 40 * 2          # one z slice of the 40x40x12 MET_SHORT header written by write_mhd_header
FOREIGN = b"\x5a"


def _outside(root: Path, name: str = "secret.raw", size: int = SLICE) -> Path:
    folder = root / "outside"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(FOREIGN * size)
    return path


def _slices(folder: Path, count: int = 12, skip: tuple[int, ...] = ()) -> None:
    for i in range(1, count + 1):
        if i not in skip:
            (folder / f"s{i:03d}.raw").write_bytes(bytes([i]) * SLICE)


def _list_mhd(folder: Path, names: list[str], kind: str = "LIST 2D") -> str:
    write_mhd_header(folder / "case.mhd", ElementDataFile=kind)
    with open(folder / "case.mhd", "a") as fh:
        fh.write("".join(n + "\n" for n in names))
    return "case.mhd"


def _nhdr(folder: Path, data_file: str, *, sizes="8 8 3", encoding="raw", tail: str = "", name="case.nhdr") -> str:
    (folder / name).write_text(f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: {sizes}\nencoding: {encoding}\n"
                               f"data file: {data_file}\n{tail}" + ("" if tail else "\n"))
    return name


CASES: dict[str, Callable[[Path], str]] = {}


def case(fn):
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


# -- MetaImage -------------------------------------------------------------------------------------
@case
def case_mhd_list_absolute(f):
    secret = _outside(f.parent)
    _slices(f)
    return _list_mhd(f, [f"s{i:03d}.raw" for i in range(1, 12)] + [str(secret)])


@case
def case_mhd_list_dotdot(f):
    _outside(f.parent)
    _slices(f)
    return _list_mhd(f, ["../outside/secret.raw"] + [f"s{i:03d}.raw" for i in range(2, 13)])


@case
def case_mhd_list_too_few(f):
    _slices(f)
    return _list_mhd(f, [f"s{i:03d}.raw" for i in range(1, 11)])


@case
def case_mhd_list_slice_short(f):
    _slices(f)
    (f / "s005.raw").write_bytes(b"\1" * (SLICE - 1))
    return _list_mhd(f, [f"s{i:03d}.raw" for i in range(1, 13)])


@case
def case_mhd_pattern_missing_slice(f):
    _slices(f, skip=(7,))
    write_mhd_header(f / "case.mhd", ElementDataFile="s%03d.raw 1 12 1")
    return "case.mhd"


@case
def case_mhd_pattern_slice_is_folder(f):
    _slices(f, skip=(7,))
    (f / "s007.raw").mkdir()
    write_mhd_header(f / "case.mhd", ElementDataFile="s%03d.raw 1 12 1")
    return "case.mhd"


@case
def case_mhd_pattern_outside(f):
    for i in range(1, 13):
        _outside(f.parent, f"s{i:03d}.raw")
    write_mhd_header(f / "case.mhd", ElementDataFile="../outside/s%03d.raw 1 12 1")
    return "case.mhd"


@case
def case_mhd_pattern_format_string(f):
    _slices(f)
    write_mhd_header(f / "case.mhd", ElementDataFile="s%s%s%n.raw 1 12 1")
    return "case.mhd"


@case
def case_mhd_pattern_too_few(f):
    _slices(f)
    write_mhd_header(f / "case.mhd", ElementDataFile="s%03d.raw 1 6 1")
    return "case.mhd"


@case
def case_mhd_data_file_symlink_out(f):
    secret = _outside(f.parent, size=SLICE * 12)
    (f / "case.raw").symlink_to(secret)
    write_mhd_header(f / "case.mhd", ElementDataFile="case.raw")
    return "case.mhd"


@case
def case_mhd_data_file_too_long(f):
    (f / "case.raw").write_bytes(b"\1" * SLICE * 24)   # twice the voxels: the header does not describe it
    write_mhd_header(f / "case.mhd")
    return "case.mhd"


@case
def case_mhd_header_size_past_data(f):
    (f / "case.raw").write_bytes(b"\1" * SLICE * 12)
    write_mhd_header(f / "case.mhd")
    text = (f / "case.mhd").read_text().replace("ElementDataFile", "HeaderSize = 100\nElementDataFile")
    (f / "case.mhd").write_text(text)
    return "case.mhd"


@case
def case_mhd_data_file_fifo(f):
    os.mkfifo(f / "case.raw")   # ITK would block on it for ever
    write_mhd_header(f / "case.mhd")
    return "case.mhd"


@case
def case_mha_detached_outside(f):
    _outside(f.parent, size=SLICE * 12)
    write_mhd_header(f / "case.mha", ElementDataFile="../outside/secret.raw")
    return "case.mha"


@case
def case_mhd_local_short(f):
    write_mhd_header(f / "case.mhd", ElementDataFile="LOCAL")
    with open(f / "case.mhd", "ab") as fh:
        fh.write(b"\1" * (SLICE * 12 - 3))
    return "case.mhd"


# -- NRRD detached headers ------------------------------------------------------------------------
@case
def case_nhdr_dotdot(f):
    _outside(f.parent, size=8 * 8 * 3)
    return _nhdr(f, "../outside/secret.raw")


@case
def case_nhdr_absolute(f):
    return _nhdr(f, str(_outside(f.parent, size=8 * 8 * 3)))


@case
def case_nrrd_named_header_detached_out(f):
    _outside(f.parent, size=8 * 8 * 3)
    return _nhdr(f, "../outside/secret.raw", name="case.nrrd")


@case
def case_nhdr_list_absolute(f):
    secret = _outside(f.parent, size=64)
    (f / "a.raw").write_bytes(b"\1" * 64)
    return _nhdr(f, "LIST", tail=f"a.raw\n{secret}\na.raw\n")


@case
def case_nhdr_list_subdim_outside(f):
    _outside(f.parent, size=64 * 3)
    return _nhdr(f, "LIST 3", tail="../outside/secret.raw\n")


@case
def case_nhdr_pattern_missing(f):
    for i in (1, 2):
        (f / f"p{i}.raw").write_bytes(b"\1" * 64)
    return _nhdr(f, "p%d.raw 1 3 1")


@case
def case_nhdr_pattern_outside(f):
    for i in (1, 2, 3):
        _outside(f.parent, f"p{i}.raw", size=64)
    return _nhdr(f, "../outside/p%d.raw 1 3 1")


@case
def case_nhdr_raw_too_long(f):
    (f / "d.raw").write_bytes(b"\1" * 8 * 8 * 6)
    return _nhdr(f, "d.raw")


@case
def case_nhdr_gzip_truncated(f):
    data = gzip.compress(b"\1" * 8 * 8 * 3)
    (f / "d.raw.gz").write_bytes(data[: len(data) // 2])
    return _nhdr(f, "d.raw.gz", encoding="gzip")


# -- the input itself and DICOM folders -------------------------------------------------------------
@case
def case_input_symlink_out(f):
    write_volume(cn.Volume(np.ones((5, 6, 7), np.int16)), f.parent / "outside.nii.gz")
    (f / "linked.nii.gz").symlink_to(f.parent / "outside.nii.gz")
    return "linked.nii.gz"


@case
def case_dicom_symlink_out(f):
    from helpers.dicom_series import write_dicom_series

    outside = f.parent / "outside_series"
    write_dicom_series(outside, "1.2.826.0.1.3680043.2.1125.7", np.zeros((3, 8, 8), np.int16))
    series = f / "series"
    write_dicom_series(series, "1.2.826.0.1.3680043.2.1125.7", np.zeros((3, 8, 8), np.int16), prefix="in")
    first = sorted(outside.iterdir())[0]
    (series / "zz_linked.dcm").symlink_to(first)
    return "series"


@case
def case_dicom_folder_symlink_out(f):
    from helpers.dicom_series import write_dicom_series

    outside = f.parent / "outside_series"
    write_dicom_series(outside, "1.2.826.0.1.3680043.2.1125.9", np.zeros((3, 8, 8), np.int16))
    (f / "series").symlink_to(outside, target_is_directory=True)
    return "series"


@case
def case_dicom_fifo(f):
    from helpers.dicom_series import write_dicom_series

    series = f / "series"
    write_dicom_series(series, "1.2.826.0.1.3680043.2.1125.8", np.zeros((3, 8, 8), np.int16))
    os.mkfifo(series / "pipe.dcm")
    return "series"


# -- NIfTI: stored values and scaling (item 13) -----------------------------------------------------
def _nifti(f: Path, name: str, array: np.ndarray, **patch) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(f / name))
    if patch:
        data = bytearray((f / name).read_bytes())
        for offset, value in patch.values():
            data[offset:offset + len(value)] = value
        (f / name).write_bytes(bytes(data))
    return name


@case
def case_nifti_all_nan(f):
    return _nifti(f, "nan.nii", np.full((5, 6, 7), np.nan, np.float32))


@case
def case_nifti_gz_all_nan(f):
    return _nifti(f, "nan.nii.gz", np.full((5, 6, 7), np.nan, np.float32))


@case
def case_nifti_one_inf_float64(f):
    array = np.zeros((5, 6, 7))
    array[4, 5, 6] = -np.inf
    return _nifti(f, "inf.nii.gz", array)


@case
def case_nifti_slope_nan(f):
    return _nifti(f, "slope.nii", np.ones((5, 6, 7), np.int16), slope=(112, np.float32(np.nan).tobytes()))


@case
def case_nifti_inter_inf(f):
    return _nifti(f, "inter.nii", np.ones((5, 6, 7), np.int16), slope=(112, np.float32(2).tobytes()),
                  inter=(116, np.float32(np.inf).tobytes()))


@case
def case_nifti_pair_magic(f):
    name = _nifti(f, "pair.nii", np.ones((5, 6, 7), np.int16), magic=(344, b"ni1\0"))
    (f / "pair.img").write_bytes(b"\1" * 420)
    return name


def _run_cli(tmp_path: Path, target: Path, capsys) -> tuple[int, str]:
    code = main(["run", "--app", APP, "--server", "local", "--input", str(target), "--output", str(tmp_path / "out"),
                 "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_refuses(tmp_path, name, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    culprit = CASES[name](inputs)
    before = digest(inputs)
    code, err = _run_cli(tmp_path, inputs, capsys)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in err, err
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")
    assert digest(inputs) == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_refuses(tmp_path, name):
    inputs = tmp_path / "input"
    inputs.mkdir()
    culprit = CASES[name](inputs)
    with pytest.raises(VolumeError) as info:
        cn.segment(inputs / culprit, app=APP, server="local")
    assert culprit in str(info.value) and "\n" not in str(info.value)


def test_single_file_input_symlink_out(tmp_path, capsys):
    """--input a single file: its folder is the file's own folder; a link out of it is refused."""
    write_volume(cn.Volume(np.ones((5, 6, 7), np.int16)), tmp_path / "elsewhere.nii.gz")
    (tmp_path / "input").mkdir()
    link = tmp_path / "input" / "ct.nii.gz"
    link.symlink_to(tmp_path / "elsewhere.nii.gz")
    code, err = _run_cli(tmp_path, link, capsys)
    assert code != 0 and "ct.nii.gz" in err and "outside" in err
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")


# -- what stays accepted -----------------------------------------------------------------------------
def test_split_metaimage_and_nrrd_inside_the_folder_read_whole(tmp_path):
    _slices(tmp_path)
    _list_mhd(tmp_path, [f"s{i:03d}.raw" for i in range(1, 13)])
    listed = read_volume(tmp_path / "case.mhd").array
    assert listed.shape == (12, 40, 40) and [int(listed[z, 0, 0]) for z in range(12)] == \
           [int(np.frombuffer(bytes([i, i]), np.int16)[0]) for i in range(1, 13)]
    write_mhd_header(tmp_path / "pattern.mhd", ElementDataFile="s%03d.raw 1 12 1")
    assert np.array_equal(read_volume(tmp_path / "pattern.mhd").array, listed)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.raw").write_bytes(np.arange(8 * 8 * 3, dtype=np.uint8).tobytes())
    _nhdr(tmp_path, "sub/d.raw")
    assert np.array_equal(read_volume(tmp_path / "case.nhdr").array.ravel(), np.arange(192, dtype=np.uint8))
    (tmp_path / "linked.nhdr").symlink_to(tmp_path / "case.nhdr")   # a link that stays inside
    assert np.array_equal(read_volume(tmp_path / "linked.nhdr").array.ravel(), np.arange(192, dtype=np.uint8))


def test_finite_nifti_keeps_its_values(tmp_path):
    array = np.random.default_rng(3).normal(size=(9, 10, 11)).astype(np.float32)
    for name in ("f.nii", "f.nii.gz"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        assert np.array_equal(read_volume(tmp_path / name).array, array)


def test_nan_survives_every_other_reader(tmp_path):
    """Same class as item 13: the NRRD and MetaImage readers keep NaN, so the finite check sees it."""
    array = np.full((5, 6, 7), np.nan, np.float32)
    for name in ("nan.nrrd", "nan.mha", "nan.mhd"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        with pytest.raises(VolumeError, match=f"{name}: 210 voxels are not finite"):
            read_volume(tmp_path / name)


# -- item 11: resource limits ------------------------------------------------------------------------
import json  # noqa: E402

from clara_napari.core.config import parse_config  # noqa: E402

PLACEHOLDERS = {"PBTXT_PATH": "config.pbtxt"}
from clara_napari.core.errors import ConfigError, ResourceError  # noqa: E402
from clara_napari.core.resources import VolumeHeader, count_windows, estimate_run_memory, inference_grid_size  # noqa: E402
from clara_napari.core.windows import plan_windows  # noqa: E402

from helpers import BUNDLED_APP, bundled_config, write_app  # noqa: E402

LUNG_APP = DATA_ROOT / "config" / "lung_ct"


def _app(folder: Path, base: Path = BUNDLED_APP, **inferer_args) -> Path:
    config = json.loads((base / "config_inference.json").read_text())
    config["inferer"]["args"].update(inferer_args)
    return write_app(folder, config)


def _sparse_mhd(folder: Path, size=(1024, 1024, 1024), element="MET_SHORT", spacing="1 1 1") -> Path:
    """A MetaImage of 2 GiB declared voxels whose data file is sparse (no disk, no reading needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "big.mhd"
    header.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, size))}\nElementType = {element}\n"
                      f"ElementSpacing = {spacing}\nElementDataFile = big.raw\n")
    with open(folder / "big.raw", "wb") as fh:
        fh.truncate(int(np.prod(size)) * 2)
    return header


def _cli(tmp_path: Path, app: Path | str, inputs: Path, capsys) -> tuple[int, list[str]]:
    code = main(["run", "--app", str(app), "--server", "local", "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--publish", str(tmp_path / "pub"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]


@pytest.mark.parametrize("overlap, ok", [(0.0, True), (0.95, True), (0.951, False), (0.999, False), (1.0, False),
                                         (-0.1, False)])
def test_overlap_limit_is_in_the_schema(overlap, ok):
    config = bundled_config()
    config["inferer"]["args"]["overlap"] = overlap
    if ok:
        assert parse_config(config, file="c.json", placeholders=PLACEHOLDERS).inferer.overlap == overlap
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(config, file="c.json", placeholders=PLACEHOLDERS)
        assert info.value.json_path == "inferer.args.overlap"
        assert "0.95" in str(info.value) or overlap < 0


def test_overlap_0999_refused_by_the_cli(tmp_path, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_volume(cn.Volume(np.ones((8, 9, 10), np.int16)), inputs / "ct.nii.gz")
    code, lines = _cli(tmp_path, _app(tmp_path / "app", overlap=0.999), inputs, capsys)
    assert code != 0 and len(lines) == 1 and "inferer.args.overlap" in lines[0], lines
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")


def test_two_gib_metaimage_whose_first_step_needs_eight_is_refused_up_front(tmp_path, capsys, monkeypatch):
    header = _sparse_mhd(tmp_path / "input")
    config = parse_config(json.loads((LUNG_APP / "config_inference.json").read_text()), file="lung", placeholders=PLACEHOLDERS)
    estimate = estimate_run_memory(VolumeHeader(header, (1024,) * 3, (1.0,) * 3, (0.0,) * 3,
                                                (1, 0, 0, 0, 1, 0, 0, 0, 1), 2), config, out_channels=2,
                                   roi=[320, 320, 64])
    assert estimate.stages["read"] == 4 * 1024**3 and estimate.stages["load"] == 8 * 1024**3
    monkeypatch.setenv("CLARA_NAPARI_MEMORY_LIMIT_GIB", "8")
    code, lines = _cli(tmp_path, "lung_ct", tmp_path / "input", capsys)
    assert code != 0 and len(lines) == 1, lines
    assert "big.mhd" in lines[0] and "8.0 GiB is available" in lines[0] and "before reading the voxels" in lines[0]
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")
    with pytest.raises(ResourceError, match=r"big\.mhd: this run needs about \d+\.\d GiB"):
        cn.segment(header, app="lung_ct", server="local")


def test_resampling_that_cannot_fit_is_refused_with_the_real_memory_figure(tmp_path, capsys):
    """No override: a 0.05 mm target spacing on a 2 GiB volume needs terabytes."""
    config = json.loads((LUNG_APP / "config_inference.json").read_text())
    config["pre_transforms"][2]["args"]["target_resolution"] = [0.05, 0.05, 0.05]
    app = write_app(tmp_path / "app", config)
    _sparse_mhd(tmp_path / "input")
    code, lines = _cli(tmp_path, app, tmp_path / "input", capsys)
    assert code != 0 and len(lines) == 1 and "GiB is available; refused before reading" in lines[0], lines


def test_roi_4096_is_refused_with_the_number(tmp_path, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    volume = cn.Volume(np.ones((40, 41, 42), np.uint8))
    write_volume(volume, inputs / "t1.nii.gz")
    app = _app(tmp_path / "app", roi_size=[4096, 4096, 4096])
    code, lines = _cli(tmp_path, app, inputs, capsys)
    assert code != 0 and len(lines) == 1 and "t1.nii.gz" in lines[0] and "GiB" in lines[0], lines
    assert_nothing_written(tmp_path / "out", tmp_path / "pub")
    with pytest.raises(ResourceError, match="t1.nii.gz: this run needs about"):
        cn.segment(inputs / "t1.nii.gz", app=app, server="local")
    with pytest.raises(ResourceError, match=r"windows of \[4096, 4096, 4096\] need about \d+\.\d GiB"):
        cn.segment(volume, app=app, server="local")   # in memory: refused before the windows


def test_window_count_bound_refused_with_the_number(tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "input"
    inputs.mkdir()
    volume = cn.Volume(np.ones((64, 64, 64), np.uint8))
    write_volume(volume, inputs / "t1.nii.gz")
    app = _app(tmp_path / "app", roi_size=[32, 32, 32], overlap=0.95)
    code, lines = _cli(tmp_path, app, inputs, capsys)
    assert code != 0 and len(lines) == 1 and "needs 9261 windows" in lines[0] and "5000 allowed" in lines[0], lines
    with pytest.raises(ResourceError, match="needs 9261 windows"):
        cn.segment(volume, app=app, server="local")
    monkeypatch.setenv("CLARA_NAPARI_MAX_WINDOWS", "7")
    small = _app(tmp_path / "small", roi_size=[32, 32, 32], overlap=0.5)
    with pytest.raises(ResourceError, match="needs 27 windows .* more than the 7 allowed"):
        cn.segment(inputs / "t1.nii.gz", app=small, server="local")


@pytest.mark.parametrize("shape, roi, overlap", [((64, 64, 64), (32, 32, 32), 0.95), ((10, 300, 7), (16, 64, 8), 0.5),
                                                 ((181, 217, 181), (160, 160, 160), 0.5), ((5, 5, 5), (9, 9, 9), 0.9)])
def test_window_count_matches_the_plan(shape, roi, overlap):
    assert count_windows(shape, roi, overlap) == len(plan_windows(shape, roi, overlap))


def test_inference_grid_follows_the_resampling(tmp_path):
    config = parse_config(json.loads((LUNG_APP / "config_inference.json").read_text()), file="lung", placeholders=PLACEHOLDERS)
    header = VolumeHeader(tmp_path, (512, 512, 61), (0.627, 0.627, 5.0), (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), 2)
    assert inference_grid_size(header, config) == (401, 401, 61)


from helpers.hostile_inputs import needs_root, run_without_dac_override, shared_tmp  # noqa: E402


@needs_root
def test_unreadable_pattern_slice_is_an_error_not_garbage():
    """main: an unreadable %d slice was skipped by MetaIO and its memory segmented with exit 0."""
    with shared_tmp() as tmp:
        inputs = tmp / "input"
        inputs.mkdir(mode=0o777)
        _slices(inputs)
        write_mhd_header(inputs / "case.mhd", ElementDataFile="s%03d.raw 1 12 1")
        (inputs / "s007.raw").chmod(0)
        result = run_without_dac_override(["run", "--app", APP, "--server", "local", "--input", str(inputs),
                                           "--output", str(tmp / "out"), "--publish", str(tmp / "pub"),
                                           "--logs", str(tmp / "logs")])
        assert result.returncode != 0
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "case.mhd" in lines[0] and "s007.raw" in lines[0], result.stderr
        assert "permission denied" in lines[0] and "Traceback" not in result.stderr
        assert_nothing_written(tmp / "out", tmp / "pub")
