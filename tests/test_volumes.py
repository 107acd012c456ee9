import gzip
import time

import numpy as np
import pytest
import SimpleITK as sitk

from radcascade import hostile
from radcascade.volume_headers import VolumeBudget, check_volume_file

from radcascade.volumes import (
    InvalidVolumeError,
    atomic_write_image,
    label_image_like,
    load_label_for,
    load_volume,
    read_geometry,
    read_image,
    read_label,
)


def _image(arr, spacing=(1.0, 1.0, 2.0), direction=None, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_orientation_roundtrip_puts_label_back_on_original_voxels(tmp_path):
    # A RAS-oriented file (as many NIfTI writers produce): x and y axes flipped w.r.t. LPS.
    arr = np.zeros((6, 8, 10), np.int16)  # (z, y, x)
    arr[2, 3, 7] = 500
    img = _image(arr, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), origin=(10.0, 20.0, -5.0))
    path = atomic_write_image(img, tmp_path / "ras.nii.gz")
    vol = load_volume(path)
    assert vol.shape == (10, 8, 6)
    peak = np.unravel_index(np.argmax(vol.array), vol.shape)
    label = np.zeros(vol.shape, np.uint8)
    label[peak] = 1
    out = label_image_like(label, vol)
    assert out.GetSize() == img.GetSize()
    assert np.allclose(out.GetDirection(), img.GetDirection()) and np.allclose(out.GetOrigin(), img.GetOrigin())
    back = sitk.GetArrayFromImage(out)
    assert back[2, 3, 7] == 1 and back.sum() == 1
    # and the physical position of the peak agrees
    assert np.allclose(vol.index_to_physical(peak), img.TransformIndexToPhysicalPoint((7, 3, 2)))
    # label reading follows the same orientation handling
    lab_path = atomic_write_image(out, tmp_path / "lab.nii.gz")
    np.testing.assert_array_equal(load_label_for(lab_path, vol), label)


def test_2d_and_4d_images_are_refused(tmp_path):
    p2 = atomic_write_image(sitk.GetImageFromArray(np.zeros((5, 5), np.int16)), tmp_path / "flat.nii.gz")
    with pytest.raises(InvalidVolumeError, match="2D"):
        read_image(p2)
    vec = sitk.JoinSeries([_image(np.zeros((4, 4, 4), np.int16))] * 3)
    p4 = atomic_write_image(vec, tmp_path / "four.nii.gz")
    with pytest.raises(InvalidVolumeError, match="4D"):
        read_image(p4)


def test_random_bytes_truncation_nan_and_size_limit(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(InvalidVolumeError, match="not a readable"):
        read_image(junk)
    good = atomic_write_image(_image(np.random.default_rng(2).normal(size=(20, 20, 20)).astype(np.int16)), tmp_path / "g.nii.gz")
    for name in ("t.nii.gz", "t.nii", "t.nrrd"):
        src = atomic_write_image(sitk.ReadImage(str(good)), tmp_path / ("full-" + name), compress=name.endswith("gz"))
        data = src.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(InvalidVolumeError):
            read_image(tmp_path / name)
    # ITK's NIfTI reader already turns NaN/Inf into 0; NRRD keeps them, so they must be refused.
    nan = np.ones((4, 4, 4), np.float32)
    nan[1, 1, 1] = np.inf
    with pytest.raises(InvalidVolumeError, match="NaN"):
        read_image(atomic_write_image(_image(nan), tmp_path / "nan.nrrd"))
    with pytest.raises(InvalidVolumeError, match="exceeds the limit"):
        read_image(good, max_voxels=100)


def test_zero_spacing_is_refused(tmp_path):
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspace: left-posterior-superior\n"
        "space directions: (0,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\nendian: little\n\n"
    )
    p = tmp_path / "zero.nrrd"
    p.write_bytes(header.encode() + np.zeros(64, np.int16).tobytes())
    with pytest.raises(InvalidVolumeError):
        read_image(p)


def test_label_geometry_must_match(tmp_path):
    img = atomic_write_image(_image(np.zeros((6, 8, 10), np.int16)), tmp_path / "i.nii.gz")
    vol = load_volume(img)
    wrong_size = atomic_write_image(_image(np.zeros((6, 8, 9), np.uint8)), tmp_path / "l1.nii.gz")
    with pytest.raises(InvalidVolumeError, match="size"):
        load_label_for(wrong_size, vol)
    shifted = atomic_write_image(_image(np.zeros((6, 8, 10), np.uint8), origin=(5.0, 0.0, 0.0)), tmp_path / "l2.nii.gz")
    with pytest.raises(InvalidVolumeError, match="geometry"):
        load_label_for(shifted, vol)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_image(_image(np.zeros((3, 3, 3), np.int16)), tmp_path / "a.nii.gz")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["a.nii.gz"]
    assert not (tmp_path / ".tmp").exists()


# -- raw headers and streaming checks (issue 13) ------------------------------------------------------

def test_nan_voxels_and_spacing_are_checked_as_written(tmp_path):
    nan = hostile.nan_nifti(tmp_path / "nan.nii.gz")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(nan))).min() == 0  # what ITK alone would accept
    with pytest.raises(InvalidVolumeError, match="NaN"):
        read_image(nan)
    for spacing in ((0.0, 1.0, 1.0), (1.0, float("nan"), 1.0)):
        path = hostile.spacing_nifti(tmp_path / "spacing.nii.gz", spacing)
        assert sitk.ReadImage(str(path)).GetSpacing() == (1.0, 1.0, 1.0)  # ITK's reading
        with pytest.raises(InvalidVolumeError, match="spacing"):
            read_image(path)


def test_bombs_are_refused_before_inflating(tmp_path):
    image = tmp_path / "image.nii.gz"
    hostile._gzip_stream(image, hostile._nifti1_header((32, 32, 16), 4, 16) + bytes(32 * 32 * 16 * 2), 0)
    check_volume_file(image, VolumeBudget(10**9, 32))
    trailing = hostile.trailing_bomb(tmp_path / "trailing.nii.gz", image, trailing_bytes=200 << 20)
    with pytest.raises(InvalidVolumeError, match="trailing data") as e:
        check_volume_file(trailing, VolumeBudget(10**9, 32))
    assert e.value.too_large
    ratio = hostile.ratio_bomb(tmp_path / "ratio.nii.gz", shape=(400, 400, 400))
    with pytest.raises(InvalidVolumeError, match="decompression bomb"):
        check_volume_file(ratio, VolumeBudget(10**9, 32))
    with pytest.raises(InvalidVolumeError, match="differs from its image"):
        check_volume_file(ratio, VolumeBudget(10**9), expected_size=(32, 32, 16))


def test_label_size_is_compared_before_reading_voxels(tmp_path):
    bomb = hostile.header_bomb(tmp_path / "bomb.nii.gz", side=600)
    expected = read_geometry(hostile.spacing_nifti(tmp_path / "img.nii.gz", (1.0, 1.0, 1.0)))
    t0 = time.perf_counter()
    with pytest.raises(InvalidVolumeError, match="size"):
        read_label(bomb, expected)
    assert time.perf_counter() - t0 < 1.0


def test_multi_member_gzip_and_detached_nrrd(tmp_path):
    header = hostile._nifti1_header((8, 8, 8), 4, 16)
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(header) + gzip.compress(bytes(8 * 8 * 8 * 2)))
    assert check_volume_file(path, VolumeBudget(10**6, 32)).size == (8, 8, 8)
    detached = tmp_path / "detached.nrrd"
    detached.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                         b"data file: /etc/passwd\n\n")
    with pytest.raises(InvalidVolumeError, match="detached"):
        read_image(detached)
