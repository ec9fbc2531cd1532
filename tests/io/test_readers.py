"""medplugin's MONAI ImageReaders used through MONAI's own LoadImage / LoadImaged."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import LoadImage, LoadImaged
from PIL import Image

from medplugin.errors import BadInputError
from medplugin.io import Image2dReader, KneeVolumeReader, MRNetReader


@pytest.fixture()
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    b = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(a[:10]).save(tmp_path / "small.png")
    return tmp_path, a, b


def test_readers_are_monai_image_readers():
    for reader in (Image2dReader(), MRNetReader(), KneeVolumeReader()):
        assert isinstance(reader, ImageReader)


def test_image2d_reader_rows_first_with_monai_meta(pngs):
    folder, a, _ = pngs
    img = LoadImage(reader=Image2dReader())(folder / "a.png")
    assert isinstance(img, MetaTensor) and img.shape == (1, 12, 20) and img.dtype == torch.float32
    np.testing.assert_array_equal(img[0].numpy(), a)  # row r of the file is row r of the array
    assert img.meta["filename_or_obj"] == str(folder / "a.png")
    assert img.meta["spatial_shape"].tolist() == [12, 20] and img.meta["original_shape"] == (12, 20)
    assert img.meta["original_channel_dim"] == 0 and img.meta["format"] == "PNG"
    np.testing.assert_array_equal(img.meta["original_affine"], np.eye(4))
    torch.testing.assert_close(img.affine, torch.eye(4, dtype=torch.float64))
    # MONAI's PIL reader puts columns first: the reason for this reader
    pil = LoadImage(reader="PILReader")(folder / "a.png")
    assert pil.shape == (20, 12)


def test_image2d_reader_through_load_imaged_and_at_call_time(pngs):
    folder, a, _ = pngs
    d = LoadImaged("image", reader=Image2dReader(channels=3))({"image": str(folder / "a.png")})
    assert d["image"].shape == (3, 12, 20)
    np.testing.assert_array_equal(d["image"][2].numpy(), a)
    img = LoadImage()(folder / "a.png", reader=Image2dReader())
    np.testing.assert_array_equal(img[0].numpy(), a)


def test_several_files_are_stacked_as_channels(pngs):
    folder, a, b = pngs
    img = LoadImage(reader=Image2dReader())([folder / "a.png", folder / "b.png"])
    assert img.shape == (2, 12, 20) and img.meta["filename_or_obj"] == str(folder / "a.png")
    np.testing.assert_array_equal(img.numpy(), np.stack([a, b]))
    with pytest.raises(BadInputError, match=r"small\.png: cannot stack with .*a\.png: spatial shape \(10, 20\)"):
        LoadImage(reader=Image2dReader())([folder / "a.png", folder / "small.png"])


def test_bad_files_raise_bad_input_error_not_monai_fallback(tmp_path, pngs):
    """With LoadImage(reader=...) MONAI would try its other readers on a file ours refuses: ours defers every
    check to get_data, so the error is ours, naming the file and the reason."""
    folder, _, _ = pngs
    src = tmp_path / "full.jpeg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(src, quality=90)
    (tmp_path / "cut.jpeg").write_bytes(src.read_bytes()[:600])
    with pytest.raises(BadInputError, match=r"cut\.jpeg: corrupt or truncated image"):
        LoadImage(reader=Image2dReader())(tmp_path / "cut.jpeg")
    with pytest.raises(BadInputError, match=r"missing\.png: file not found"):
        LoadImaged("image", reader=Image2dReader())({"image": tmp_path / "missing.png"})
    from pydicom.data import get_testdata_file

    with pytest.raises(BadInputError, match="rtdose.dcm: not an image: SOP class RT Dose Storage"):
        LoadImage(reader=Image2dReader())(get_testdata_file("rtdose.dcm"))


def test_read_only_records_names_and_suffixes_are_checked(tmp_path):
    reader = Image2dReader()
    assert reader.read(tmp_path / "not_there.png") == (tmp_path / "not_there.png",)  # no file access in read()
    assert reader.verify_suffix(["a.png", "b.JPEG", "c.dcm", "d.nii.gz"]) and not reader.verify_suffix("e.npy")
    assert MRNetReader().verify_suffix("0000.npy") and not MRNetReader().verify_suffix("x.nii")
    (tmp_path / "series").mkdir()
    assert KneeVolumeReader().verify_suffix([tmp_path / "series", "a.nii.gz", "b.npy"])
    assert not KneeVolumeReader().verify_suffix("a.png")
    with pytest.raises(ValueError, match="channels must be 1, 3 or None, got 2"):
        Image2dReader(channels=2)
    with pytest.raises(ValueError, match="order must be 'sagittal' or 'file', got 'axial'"):
        KneeVolumeReader(order="axial")
    with pytest.raises(ValueError, match=r"spacing must be three positive numbers \(mm\), got \[1.0, -1.0, 1.0\]"):
        MRNetReader(spacing=(1, -1, 1))


def test_mrnet_reader(tmp_path):
    vol = np.random.default_rng(2).integers(0, 256, (6, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "0000.npy", vol)
    img = LoadImage(reader=MRNetReader(spacing=(3.0, 0.5, 0.5)), dtype=None)(tmp_path / "0000.npy")
    assert img.shape == (6, 16, 16) and img.dtype == torch.uint8
    np.testing.assert_array_equal(img.numpy(), vol)
    np.testing.assert_array_equal(np.diag(img.affine.numpy()), [3.0, 0.5, 0.5, 1.0])
    assert np.isnan(img.meta["original_channel_dim"]) and img.meta["spatial_shape"].tolist() == [6, 16, 16]
    # MONAI's EnsureChannelFirst reads the "no channel" marker
    first = LoadImage(reader=MRNetReader(), ensure_channel_first=True)(tmp_path / "0000.npy")
    assert first.shape == (1, 6, 16, 16)
    assert LoadImage(reader=MRNetReader(channel_first=True))(tmp_path / "0000.npy").shape == (1, 6, 16, 16)
    np.save(tmp_path / "f.npy", vol.astype(np.float64))
    with pytest.raises(BadInputError, match=r"f\.npy: dtype float64, expected uint8 as in MRNet \(pass allow_float"):
        LoadImage(reader=MRNetReader())(tmp_path / "f.npy")
    assert LoadImage(reader=MRNetReader(allow_float=True), dtype=None)(tmp_path / "f.npy").dtype == torch.float32
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="refused to load: the array holds pickled Python objects"):
        LoadImage(reader=MRNetReader())(tmp_path / "evil.npy")


def test_knee_volume_reader_keeps_file_grid_of_an_axial_nifti(tmp_path):
    data = np.random.default_rng(3).normal(100, 10, (10, 12, 5)).astype(np.float32)  # (i: L-R, j: A-P, k: S-I)
    affine = np.array([[0.5, 0, 0, -3], [0, 0.6, 0, 4], [0, 0, 4.0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "axial.nii.gz")
    img = LoadImage(reader=KneeVolumeReader(channel_first=False))(tmp_path / "axial.nii.gz")
    # sagittal slices first: L-R (i) slices, S-I (k) rows, A-P (j) columns
    assert img.shape == (10, 5, 12) and img.meta["file_axes"].tolist() == [0, 2, 1]
    np.testing.assert_array_equal(img.numpy(), data.transpose(0, 2, 1))
    np.testing.assert_allclose(img.affine.numpy()[:3, :3], affine[:3, [0, 2, 1]])
    np.testing.assert_allclose(img.meta["original_affine"].numpy(), affine)
    assert np.isnan(img.meta["original_channel_dim"])


def test_knee_volume_reader_dicom_series_choice(tmp_path):
    from tests.io.test_mrnet import _write_dicom_series

    first = _write_dicom_series(tmp_path / "two", n=3, shuffle=False)
    _write_dicom_series(tmp_path / "other", n=4)
    for f in (tmp_path / "other").iterdir():
        f.rename(tmp_path / "two" / f"other_{f.name}")
    with pytest.raises(BadInputError, match=r"two: the folder holds 2 DICOM series .*pass series_uid"):
        LoadImage(reader=KneeVolumeReader())(tmp_path / "two")
    img = LoadImage(reader=KneeVolumeReader(series_uid=first))(tmp_path / "two")
    assert img.shape == (1, 3, 12, 10) and img.meta["file_axes"].tolist() == [0, 1, 2]
    torch.testing.assert_close(img.meta["original_affine"], img.affine)


def test_readers_pickle(pngs):
    folder, a, _ = pngs
    loader = pickle.loads(pickle.dumps(LoadImage(reader=Image2dReader(channels=None))))
    np.testing.assert_array_equal(loader(folder / "a.png")[0].numpy(), a)
    assert pickle.loads(pickle.dumps(KneeVolumeReader(order="file"))).order == "file"
