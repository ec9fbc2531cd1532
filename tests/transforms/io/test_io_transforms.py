"""LoadImage2d(d) and LoadKneeVolume(d): MONAI LoadImage(d) with medplugin's readers, and nothing more."""

from __future__ import annotations

import logging
import pickle
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from medplugin.errors import BadInputError
from medplugin.io import Image2dReader, KneeVolumeReader
from medplugin.transforms import LoadImage2d, LoadImage2dd, LoadKneeVolume, LoadKneeVolumed


@pytest.fixture()
def png(tmp_path):
    arr = (np.arange(30 * 50) % 253).reshape(30, 50).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    return tmp_path / "x.png", arr


@pytest.fixture()
def npy(tmp_path):
    vol = np.random.default_rng(0).integers(0, 256, (5, 8, 9), dtype=np.uint8)
    np.save(tmp_path / "0000.npy", vol)
    return tmp_path / "0000.npy", vol


def test_loaders_are_monai_load_image_with_one_reader():
    for loader, reader_type in ((LoadImage2d(), Image2dReader), (LoadKneeVolume(), KneeVolumeReader)):
        assert isinstance(loader, LoadImage)
        assert [type(r) for r in loader.readers] == [reader_type]
        # every attribute LoadImage's own constructor sets, with the same values as LoadImage(reader=...) gets
        monai = LoadImage(reader=loader.readers[0], image_only=True, dtype=loader.dtype, expanduser=False)
        own = {k: v for k, v in vars(monai).items() if k != "readers"}
        assert {k: getattr(loader, k) for k in own} == own


def test_constructing_the_loaders_logs_and_warns_nothing(caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        LoadImage2d(), LoadImage2dd("image"), LoadKneeVolume(), LoadKneeVolumed("image")
    assert not caught and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_image2d_same_as_monai_load_image_with_the_reader(png):
    path, arr = png
    ours = LoadImage2d(channels=3)(path)
    monai = LoadImage(reader=Image2dReader(channels=3))(path)
    assert isinstance(ours, MetaTensor) and ours.shape == (3, 30, 50)
    torch.testing.assert_close(ours.as_tensor(), monai.as_tensor())
    assert ours.meta.keys() == monai.meta.keys()
    np.testing.assert_array_equal(ours[1].numpy(), arr)
    half = LoadImage2d(dtype=torch.float16)(path)
    assert half.dtype == torch.float16 and torch.equal(half[0].float(), torch.as_tensor(arr, dtype=torch.float32))


def test_dictionary_versions_keep_the_path(png, npy):
    path, arr = png
    d = LoadImage2dd(["image", "other"], channels=1, path_key="path", allow_missing_keys=True)({"image": path})
    assert d["path"] == str(path) and "other" not in d
    np.testing.assert_array_equal(d["image"][0].numpy(), arr)
    kept = LoadImage2dd("image", path_key="path")({"image": str(path), "path": "given"})
    assert kept["path"] == "given"
    npath, vol = npy
    v = LoadKneeVolumed("image", channel_first=False, path_key="path")({"image": npath})
    assert v["path"] == str(npath) and v["image"].shape == (5, 8, 9)
    np.testing.assert_array_equal(v["image"].numpy(), vol)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(BadInputError, match=r"nope\.png: file not found"):
        LoadImage2d()(tmp_path / "nope.png")
    with pytest.raises(BadInputError, match=r"nope\.nii\.gz: knee MRI exam not found"):
        LoadKneeVolumed("image")({"image": tmp_path / "nope.nii.gz"})
    with pytest.raises(ValueError, match="channels must be 1, 3 or None, got 4"):
        LoadImage2dd("image", channels=4)
    with pytest.raises(ValueError, match="order must be 'sagittal' or 'file', got 'coronal'"):
        LoadKneeVolume(order="coronal")


def test_loaders_pickle_for_dataloader_workers(png, npy):
    path, arr = png
    loader = pickle.loads(pickle.dumps(LoadImage2dd("image", channels=None)))
    np.testing.assert_array_equal(loader({"image": path})["image"][0].numpy(), arr)
    npath, vol = npy
    knee = pickle.loads(pickle.dumps(LoadKneeVolume(npy_spacing=(2.0, 1.0, 1.0))))
    out = knee(npath)
    assert out.shape == (1, 5, 8, 9) and float(out.affine[0, 0]) == 2.0


def test_knee_loaders_are_exported_from_io():
    import medplugin.transforms as t
    import medplugin.transforms.io as tio

    assert t.LoadKneeVolume is tio.LoadKneeVolume and t.LoadKneeVolumed is tio.LoadKneeVolumed
