"""Volume IO: exact geometry round-trips, DICOM series, and every refusal naming its file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st

from clara_napari.core import volume_headers
from clara_napari.core.errors import VolumeError
from clara_napari.core.volume import Volume, find_volumes, read_volume, volume_stem, write_volume

from helpers import assert_same_geometry, make_volume, oblique_volume, random_rotation
from helpers.dicom_series import write_dicom_series


def leftovers(folder: Path) -> list[str]:
    """Hidden or temporary names a write may have left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part"))


# -- round-trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, np.int32])
def test_metaimage_round_trip_is_exact(tmp_path, suffix, dtype):
    vol = make_volume((5, 6, 7), dtype=dtype, spacing=(0.1 + 1e-9, 1.0 / 3.0, 2.718281828459045),
                      origin=(-123.456789012345, 0.1 + 0.2, 1e-7))
    written = write_volume(vol, tmp_path / f"v{suffix}")
    assert written == tmp_path / f"v{suffix}"
    back = read_volume(written)
    assert_same_geometry(back, vol)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.path == written and back.name == "v"


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_oblique_direction_round_trips_exactly(tmp_path, suffix, seed):
    vol = oblique_volume(seed)
    assert vol.is_oblique
    back = read_volume(write_volume(vol, tmp_path / f"oblique{suffix}"))
    assert_same_geometry(back, vol)
    assert back.is_oblique
    np.testing.assert_array_equal(back.array, vol.array)


def test_compressed_mhd_round_trip(tmp_path):
    vol = oblique_volume(11, dtype=np.float32)
    written = write_volume(vol, tmp_path / "c.mhd", compress=True)
    assert sorted(os.listdir(tmp_path)) == ["c.mhd", "c.zraw"]
    back = read_volume(written)
    assert_same_geometry(back, vol)
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("source_suffix", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("target_suffix", [".mhd", ".mha"])
def test_nifti_and_nrrd_geometry_survives_conversion_to_metaimage(tmp_path, source_suffix, target_suffix):
    # NIfTI stores float32 geometry and NRRD rounds it: what was *read* must survive exactly.
    src = tmp_path / "src" / f"in{source_suffix}"
    src.parent.mkdir()
    sitk.WriteImage(oblique_volume(5, dtype=np.int16).to_sitk(), str(src))
    first = read_volume(src)
    assert first.is_oblique
    back = read_volume(write_volume(first, tmp_path / f"out{target_suffix}"))
    assert_same_geometry(back, first)
    np.testing.assert_array_equal(back.array, first.array)


def test_real_nifti_converts_to_mha_exactly(tmp_path, chest_ct_path):
    first = read_volume(chest_ct_path)
    assert first.size == (512, 512, 61) and first.array.dtype == np.int16
    back = read_volume(write_volume(first, tmp_path / "ct.mha"))
    assert_same_geometry(back, first)
    np.testing.assert_array_equal(back.array, first.array)


def test_volume_stem_and_find_volumes(tmp_path):
    assert volume_stem("a/b/ct.nii.gz") == "ct"
    assert volume_stem("scan.v2.mhd") == "scan.v2"
    vol = make_volume()
    write_volume(vol, tmp_path / "b.mha")
    write_volume(vol, tmp_path / "a.nii.gz")
    write_volume(vol, tmp_path / ".hidden.mha")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_volumes(tmp_path)] == ["a.nii.gz", "b.mha"]


# property: any small grid with an orthonormal direction round-trips via .mhd exactly
finite = {"allow_nan": False, "allow_infinity": False, "allow_subnormal": False}  # ITK reads subnormals as 0


@given(shape=st.tuples(*[st.integers(2, 6)] * 3),
       spacing=st.tuples(*[st.floats(1e-3, 1e3, **finite)] * 3),
       origin=st.tuples(*[st.floats(-1e4, 1e4, **finite)] * 3),
       seed=st.integers(0, 2**32 - 1),
       flip=st.booleans())
def test_property_mhd_round_trip_is_exact(tmp_path_factory, shape, spacing, origin, seed, flip):
    rng = np.random.default_rng(seed)
    direction = random_rotation(rng)
    if flip:  # improper (det -1) directions occur in real data too
        direction[:, 2] = -direction[:, 2]
    vol = Volume(rng.normal(size=shape).astype(np.float32), spacing=spacing, origin=origin,
                 direction=direction.ravel())
    folder = tmp_path_factory.mktemp("prop")
    back = read_volume(write_volume(vol, folder / "p.mhd"))
    assert_same_geometry(back, vol)
    np.testing.assert_array_equal(back.array, vol.array)


# -- DICOM -----------------------------------------------------------------------------------


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    array = (np.arange(4 * 6 * 5).reshape(4, 6, 5) - 50).astype(np.int16)
    uid = "1.2.826.0.1.3680043.2.1125.7001"
    write_dicom_series(tmp_path / "series", uid, array)
    vol = read_volume(tmp_path / "series")
    assert vol.size == (5, 6, 4)
    assert vol.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert vol.origin == pytest.approx((-10.0, 20.0, 30.0))
    assert vol.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, array)
    assert vol.metadata["dicom_series_uid"] == uid
    assert vol.name == "series"
    # the folder is found as one volume by the operator's scan
    assert find_volumes(tmp_path) == [tmp_path / "series"]


def test_folder_with_two_series_is_refused_listing_both(tmp_path):
    first, second = "1.2.826.0.1.3680043.2.1125.8001", "1.2.826.0.1.3680043.2.1125.8002"
    write_dicom_series(tmp_path, first, np.zeros((3, 4, 5), np.int16), prefix="a")
    write_dicom_series(tmp_path, second, np.ones((2, 4, 5), np.int16), prefix="b")
    with pytest.raises(VolumeError) as info:
        read_volume(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert first in message and second in message
    assert "2 DICOM series" in message


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(VolumeError, match="no DICOM series"):
        read_volume(tmp_path)


# -- refusals --------------------------------------------------------------------------------
def metaimage_pair(folder: Path, name: str = "ok") -> tuple[Path, str]:
    """A valid .mhd/.raw pair (int16, 6x5x4) and the header text."""
    path = write_volume(Volume(np.ones((4, 5, 6), np.int16)), folder / f"{name}.mhd")
    return path, path.read_text()


def assert_refused(path: Path, *fragments: str, **kwargs) -> VolumeError:
    with pytest.raises(VolumeError) as info:
        read_volume(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.nii.gz", "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert_refused(tmp_path / "empty.nii.gz", "empty")


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nrrd", "random.mha", "random.mhd"])
def test_random_bytes(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    assert_refused(tmp_path / name)


def test_unsupported_extension(tmp_path):
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n")
    assert_refused(tmp_path / "picture.png", "not a supported volume format")


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.Image([5, 6], sitk.sitkInt16), str(tmp_path / "flat.mha"))
    assert_refused(tmp_path / "flat.mha", "2D")
    sitk.WriteImage(sitk.Image([5, 6, 1], sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    assert_refused(tmp_path / "slice.nii.gz", "2D")


def test_4d_image(tmp_path):
    sitk.WriteImage(sitk.Image([5, 6, 4, 3], sitk.sitkInt16), str(tmp_path / "time.nii.gz"))
    assert_refused(tmp_path / "time.nii.gz", "4D")


def test_vector_image(tmp_path):
    sitk.WriteImage(sitk.Image([5, 6, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "rgb.mha"))
    assert_refused(tmp_path / "rgb.mha", "3 components")
    vol = read_volume(tmp_path / "rgb.mha", allow_channels=True)
    assert vol.array.shape == (4, 6, 5, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = bad
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    assert_refused(tmp_path / "nan.nrrd", "not finite")


def test_truncated_raw(tmp_path):
    path, _ = metaimage_pair(tmp_path)
    raw = tmp_path / "ok.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    assert_refused(path, "truncated", "ok.raw")


def test_missing_raw(tmp_path):
    path, _ = metaimage_pair(tmp_path)
    (tmp_path / "ok.raw").unlink()
    assert_refused(path, "missing", "ok.raw")


@pytest.mark.parametrize("data_file", ["../x.raw", "sub/../../x.raw"])
def test_element_data_file_outside_the_folder(tmp_path, data_file):
    inner = tmp_path / "inner"
    inner.mkdir()
    path, text = metaimage_pair(inner)
    (tmp_path / "x.raw").write_bytes((inner / "ok.raw").read_bytes())  # a readable file is there
    path.write_text(text.replace("ElementDataFile = ok.raw", f"ElementDataFile = {data_file}"))
    assert_refused(path, "outside")


def test_absolute_element_data_file(tmp_path):
    path, text = metaimage_pair(tmp_path)
    path.write_text(text.replace("ElementDataFile = ok.raw", f"ElementDataFile = {tmp_path / 'ok.raw'}"))
    assert_refused(path, "outside")


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
def test_huge_dimsize_is_refused_before_allocating(tmp_path, suffix):
    # ~1.8 PB declared; a reader that allocated first would die with MemoryError instead
    if suffix == ".mhd":
        path, text = metaimage_pair(tmp_path, "huge")
        path.write_text(text.replace("DimSize = 6 5 4", "DimSize = 100000 100000 100000"))
    else:
        path = tmp_path / "huge.mha"
        path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
                         b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 64)
    assert_refused(path, "GiB")


def test_huge_nifti_header_is_refused(tmp_path, monkeypatch):
    # the NIfTI path checks the header's size through SimpleITK before reading voxels
    sitk.WriteImage(sitk.Image([40, 40, 40], sitk.sitkFloat32), str(tmp_path / "big.nii.gz"))
    monkeypatch.setattr(volume_headers, "MAX_VOXEL_BYTES", 40 * 40 * 40 * 4 - 1)
    assert_refused(tmp_path / "big.nii.gz", "GiB")


def test_unknown_element_type(tmp_path):
    path, text = metaimage_pair(tmp_path)
    path.write_text(text.replace("MET_SHORT", "MET_QUATERNION"))
    assert_refused(path, "MET_QUATERNION")


def test_bad_dimsize(tmp_path):
    path, text = metaimage_pair(tmp_path)
    path.write_text(text.replace("DimSize = 6 5 4", "DimSize = 6 five 4"))
    assert_refused(path, "DimSize")
    path.write_text(text.replace("DimSize = 6 5 4", "DimSize = 6 0 4"))
    assert_refused(path, "DimSize")


def test_volume_needs_3d_geometry():
    with pytest.raises(VolumeError):
        Volume(np.zeros((4, 5)))
    with pytest.raises(VolumeError):
        Volume(np.zeros((4, 5, 6)), spacing=(1.0, 1.0))


# -- writing ---------------------------------------------------------------------------------
def test_write_refuses_unsupported_extension_and_leaves_nothing(tmp_path):
    with pytest.raises(VolumeError, match="cannot write this format"):
        write_volume(make_volume(), tmp_path / "out.png")
    assert os.listdir(tmp_path) == []


def test_write_refuses_its_own_source(tmp_path):
    source = write_volume(make_volume(), tmp_path / "in.mhd")
    vol = read_volume(source)
    before = (tmp_path / "in.raw").read_bytes()
    with pytest.raises(VolumeError, match="refusing to write over the input"):
        write_volume(vol.with_array(vol.array * 0), source)
    with pytest.raises(VolumeError, match="refusing to write over the input"):
        write_volume(make_volume(), tmp_path / "in.mhd", forbid=[source])
    assert (tmp_path / "in.raw").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_write_without_overwrite_refuses_existing(tmp_path):
    target = write_volume(make_volume(seed=1), tmp_path / "a.mha")
    before = target.read_bytes()
    with pytest.raises(VolumeError, match="exists already"):
        write_volume(make_volume(seed=2), target, overwrite=False)
    assert target.read_bytes() == before
    write_volume(make_volume(seed=2), target)  # overwrite=True is the default
    assert target.read_bytes() != before


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch):
    previous = write_volume(make_volume(seed=1), tmp_path / "out.mhd")
    header, data = previous.read_bytes(), (tmp_path / "out.raw").read_bytes()
    real_write = sitk.WriteImage

    def write_half_then_fail(image, name, *args):
        real_write(image, name, *args)  # the files exist in full, then the "disk" fails
        Path(name).write_bytes(b"partial")
        raise RuntimeError("simulated: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(VolumeError, match="No space left") as info:
        write_volume(make_volume(seed=2), tmp_path / "out.mhd")
    assert "out.mhd" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["out.mhd", "out.raw"]
    assert previous.read_bytes() == header and (tmp_path / "out.raw").read_bytes() == data


def test_write_onto_a_folder_leaves_no_partial_files(tmp_path):
    (tmp_path / "x.mhd").mkdir()
    with pytest.raises(VolumeError, match="x.mhd"):
        write_volume(make_volume(), tmp_path / "x.mhd")
    # neither the data file (renamed before the header) nor the staging folder may remain
    assert sorted(os.listdir(tmp_path)) == ["x.mhd"]


@pytest.mark.parametrize("dtype", [np.float16, np.bool_])
def test_write_converts_types_sitk_lacks(tmp_path, dtype):
    array = (np.arange(60).reshape(3, 4, 5) % 2).astype(dtype)
    back = read_volume(write_volume(Volume(array), tmp_path / "t.mha"))
    np.testing.assert_array_equal(back.array, array.astype(back.array.dtype))
    assert leftovers(tmp_path) == []
