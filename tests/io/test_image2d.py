import numpy as np
import pytest
import torch
from PIL import Image

from medplugin.errors import BadInputError
from medplugin.io.image2d import read_image_2d
from medplugin.transforms import LoadImage2d, LoadImage2dd


@pytest.fixture()
def gray_jpeg(tmp_path):
    arr = (np.arange(40 * 60) % 251).reshape(40, 60).astype(np.uint8)
    p = tmp_path / "g.png"
    Image.fromarray(arr).save(p)
    return p, arr


def test_rows_first_and_values_kept(gray_jpeg):
    p, arr = gray_jpeg
    img, meta = read_image_2d(p, channels=1)
    assert img.shape == (1, 40, 60) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0], arr)
    assert meta["original_shape"] == (40, 60) and meta["filename_or_obj"] == str(p)


def test_colour_and_alpha_conversions(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    p = tmp_path / "c.png"
    Image.fromarray(rgba, "RGBA").save(p)
    rgb, _ = read_image_2d(p, channels=3)
    assert rgb.shape == (3, 10, 12) and rgb[0].max() == 200 and rgb[1].max() == 0
    gray, _ = read_image_2d(p, channels=1)
    assert gray.shape == (1, 10, 12)
    np.testing.assert_allclose(gray, 0.299 * 200, atol=1e-3)


def test_truncated_zero_byte_missing_and_garbage_name_the_file(tmp_path, gray_jpeg):
    src = tmp_path / "full.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(src, quality=90)
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(src.read_bytes()[:600])
    with pytest.raises(BadInputError, match=r"cut\.jpeg: corrupt or truncated image"):
        read_image_2d(cut)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_image_2d(empty)
    with pytest.raises(BadInputError, match="missing.png: file not found"):
        read_image_2d(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(BadInputError, match=r"junk\.png: not a readable image"):
        read_image_2d(junk)


def test_transform_pair_returns_metatensor(gray_jpeg):
    p, arr = gray_jpeg
    t = LoadImage2d(channels=3)(p)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 40, 60)
    assert t.meta["filename_or_obj"] == str(p)
    d = LoadImage2dd("image", channels=1, path_key="path")({"image": str(p)})
    assert d["path"] == str(p)
    torch.testing.assert_close(d["image"][0], torch.as_tensor(arr, dtype=torch.float32))
    with pytest.raises(ValueError, match="channels must be 1, 3 or None, got 2"):
        LoadImage2d(channels=2)


def test_dicom_goes_through_the_same_loader():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    img, meta = read_image_2d(path, channels=1)
    assert img.shape == (1, 128, 128) and meta["format"] == "DICOM"
    assert 0 <= img.min() and img.max() <= 255 and img.std() > 1
    assert "PatientName" not in str(meta) and "CompressedSamples" not in str(meta)
