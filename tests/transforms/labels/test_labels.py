"""Class labels from MONAI Label label files, label maps back at the source image's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medplugin.errors import BadInputError
from medplugin.transforms import (
    ClassIndexFromFile,
    ClassIndexFromFiled,
    MultiHotFromFile,
    MultiHotFromFiled,
    ResizeToSourceImage,
    ResizeToSourceImaged,
)

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


@pytest.mark.parametrize("label, expected", [(2, 2), (np.int64(3), 3), (np.array(1), 1), (torch.tensor(0), 0),
                                             (torch.tensor([3]), 3), ("drusen", 2), ("1", 1)])
def test_indices_names_numpy_and_torch_scalars(label, expected):
    assert ClassIndexFromFile(CLASSES)(label) == expected


def test_text_and_json_label_files(tmp_path):
    t = ClassIndexFromFile(CLASSES)
    (tmp_path / "a.txt").write_text("NORMAL\n")
    (tmp_path / "b.json").write_text('{"label": "dme"}')
    (tmp_path / "c.txt").write_text("2")
    assert [t(str(tmp_path / f)) for f in ("a.txt", "b.json", "c.txt")] == [3, 1, 2]
    assert t(tmp_path / "a.txt") == 3  # a Path works as well


@pytest.mark.parametrize("content, reason", [("GLAUCOMA", "unknown class 'GLAUCOMA'"), ("", "empty label file"),
                                             ("7", "class index 7 out of range for 4 classes"),
                                             ('{"grade": 1}', 'needs a "label" key')])
def test_bad_label_files_name_the_file_and_the_reason(tmp_path, content, reason):
    f = tmp_path / ("x.json" if content.startswith("{") else "x.txt")
    f.write_text(content)
    with pytest.raises(BadInputError, match=reason) as e:
        ClassIndexFromFile(CLASSES)(str(f))
    assert e.value.path == str(f)


def test_missing_and_binary_label_files(tmp_path):
    t = ClassIndexFromFile(CLASSES)
    with pytest.raises(BadInputError, match="label file not found"):
        t(str(tmp_path / "nope.txt"))
    png = tmp_path / "mask.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    with pytest.raises(BadInputError, match="not a text label file"):
        t(str(png))


def test_dictionary_twin_names_the_image_for_a_bad_inline_label(tmp_path):
    (tmp_path / "l.txt").write_text("CNV")
    d = ClassIndexFromFiled("label", CLASSES)({"image": "/x/a.jpeg", "label": str(tmp_path / "l.txt")})
    assert d == {"image": "/x/a.jpeg", "label": 0}
    with pytest.raises(BadInputError, match=r"^/x/a.jpeg: unknown class 'FOO'"):
        ClassIndexFromFiled("label", CLASSES)({"image": "/x/a.jpeg", "label": "FOO"})
    with pytest.raises(ValueError, match="unique"):
        ClassIndexFromFile(["a", "A"])


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 80), np.uint8)).save(path)  # 48 rows, 80 columns
    return path


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_resize_to_source_keeps_labels_and_orientation(source, kind):
    small = np.zeros((1, 12, 20), np.uint8)
    small[0, :6, :5] = 1  # top-left block
    small[0, 6:, 15:] = 2  # bottom-right block
    x = small if kind == "numpy" else torch.as_tensor(small)
    out = ResizeToSourceImage()(x, source)
    assert type(out) is type(x) and out.shape == (1, 48, 80) and out.dtype == x.dtype
    out = np.asarray(out)
    assert set(np.unique(out)) == {0, 1, 2}  # nearest: no new values
    assert (out[0, :24, :20] == 1).all() and (out[0, 24:, 60:] == 2).all() and (out[0, :24, 60:] == 0).all()
    assert ResizeToSourceImage()(np.zeros((12, 20), np.float32), source).shape == (48, 80)


def test_resize_to_source_dictionary_and_errors(source):
    d = ResizeToSourceImaged("pred")({"pred": torch.ones(1, 8, 8), "path": str(source)})
    assert d["pred"].shape == (1, 48, 80)
    with pytest.raises(KeyError, match="'path'"):
        ResizeToSourceImaged("pred")({"pred": torch.ones(1, 8, 8)})
    with pytest.raises(ValueError, match="2D label map"):
        ResizeToSourceImage()(torch.ones(1, 1, 8, 8), source)
    with pytest.raises(BadInputError, match="file not found"):
        ResizeToSourceImage()(torch.ones(1, 8, 8), source.parent / "gone.png")


@pytest.fixture
def sagittal_exam(tmp_path):
    """A NIfTI exam stored (rows, columns, slices): the loader reads it slices-first."""
    import nibabel as nib

    affine = np.array([[0, 0, 3.0, -12], [0.5, 0, 0, -40], [0, -0.5, 0, 35], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    path = tmp_path / "exam.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path, data


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_to_source_voxel_order_inverts_the_knee_loader(sagittal_exam, kind):
    from medplugin.transforms import LoadKneeVolumed, ToSourceVoxelOrder

    path, data = sagittal_exam
    loaded = LoadKneeVolumed("image")({"image": str(path)})["image"]  # (1, slices, rows, cols)
    assert tuple(loaded.shape) != (1, *data.shape)  # reordered by the loader
    x = np.asarray(loaded) if kind == "numpy" else torch.as_tensor(np.asarray(loaded))
    back = ToSourceVoxelOrder()(x, path)
    assert type(back) is type(x) and tuple(back.shape) == (1, *data.shape)
    np.testing.assert_allclose(np.asarray(back)[0], data, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ToSourceVoxelOrder()(x[0], path)), data, rtol=1e-6)  # no channel


def test_to_source_voxel_order_dictionary_sets_the_reference_grid_and_errors(sagittal_exam, tmp_path):
    from monai.data import MetaTensor

    from medplugin.transforms import ToSourceVoxelOrder, ToSourceVoxelOrderd

    path, data = sagittal_exam
    pred = torch.zeros(1, 4, 5, 6)  # slices-first: (slices, rows, cols) of the (6, 5, 4) file
    image = MetaTensor(torch.zeros(1, 4, 5, 6), meta={"spatial_shape": np.array([4, 5, 6])})
    d = ToSourceVoxelOrderd("pred", ref_key="image")({"pred": pred, "image": image, "image_path": str(path)})
    assert d["pred"].shape == (1, 6, 5, 4) and d["image"].shape == (1, 4, 5, 6)  # image data unchanged
    assert list(d["image"].meta["spatial_shape"]) == [6, 5, 4] and d["image"].meta["affine"][0, 3] == -12
    assert list(image.meta["spatial_shape"]) == [4, 5, 6]  # the caller's tensor is not modified
    with pytest.raises(BadInputError, match="not a NIfTI file"):
        ToSourceVoxelOrder()(pred, tmp_path / "x.png")
    with pytest.raises(ValueError, match="3D label map"):
        ToSourceVoxelOrder()(torch.zeros(4, 6), path)
    with pytest.raises(ValueError, match="order must be"):
        ToSourceVoxelOrder("axial")


FINDINGS = ["Atelectasis", "Effusion", "Mass", "Pleural_Thickening"]


@pytest.mark.parametrize("content, expected", [
    ("Effusion|Mass", [0, 1, 1, 0]),             # NIH "Finding Labels" style
    ("mass, pleural thickening\n", [0, 0, 1, 1]),  # commas, case, space for underscore
    ("Atelectasis\nEffusion", [1, 1, 0, 0]),       # one a line
    ("No Finding", [0, 0, 0, 0]),
])
def test_multi_hot_from_text_files(tmp_path, content, expected):
    f = tmp_path / "l.txt"
    f.write_text(content)
    got = MultiHotFromFile(FINDINGS)(str(f))
    assert got.dtype == np.float32 and got.tolist() == expected


def test_multi_hot_from_json_vectors_and_names():
    t = MultiHotFromFile(FINDINGS)
    assert t([0, 1, 0, 1]).tolist() == [0, 1, 0, 1]                   # a datalist's vector passes unchanged
    assert t(torch.tensor([1.0, 0, 0, 0])).tolist() == [1, 0, 0, 0]   # torch input
    assert t(np.array([0, 0, 1, 0])).tolist() == [0, 0, 1, 0]         # numpy input
    assert t(["Mass", "Effusion"]).tolist() == [0, 1, 1, 0]


def test_multi_hot_json_label_file(tmp_path):
    f = tmp_path / "l.json"
    f.write_text('{"label": ["Effusion"]}')
    assert MultiHotFromFile(FINDINGS)(f).tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("content, reason", [
    ("Effusion|Glaucoma", "unknown finding 'Glaucoma'"),
    ("", "empty label file"),
    ("|", "no finding named"),
    ('{"label": [0, 1]}', r"must be 4 values of 0/1"),
    ('{"label": [0, 2, 0, 0]}', r"must be 4 values of 0/1"),
])
def test_bad_multi_label_files_name_the_file_and_the_reason(tmp_path, content, reason):
    f = tmp_path / ("x.json" if content.startswith("{") else "x.txt")
    f.write_text(content)
    with pytest.raises(BadInputError, match=reason) as e:
        MultiHotFromFile(FINDINGS)(str(f))
    assert e.value.path == str(f)


def test_multi_hot_dictionary_twin_names_the_image(tmp_path):
    (tmp_path / "l.txt").write_text("Mass")
    d = MultiHotFromFiled("label", FINDINGS)({"image": "/x/a.png", "label": str(tmp_path / "l.txt")})
    assert d["image"] == "/x/a.png" and d["label"].tolist() == [0, 0, 1, 0]
    with pytest.raises(BadInputError, match=r"^/x/a.png: a multi-label label must be 4 values"):
        MultiHotFromFiled("label", FINDINGS)({"image": "/x/a.png", "label": [1, 0]})
    with pytest.raises(ValueError, match="unique"):
        MultiHotFromFile(["Mass", "mass"])
