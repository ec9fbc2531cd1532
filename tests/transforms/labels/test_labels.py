"""Class labels from MONAI Label label files."""

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


@pytest.mark.parametrize("kind, content, reason", [
    ("class", "GLAUCOMA", "unknown class 'GLAUCOMA'"), ("class", "", "empty label file"),
    ("class", "7", "class index 7 out of range for 4 classes"), ("class", '{"grade": 1}', 'needs a "label" key'),
    ("multi", "Effusion|Glaucoma", "unknown finding 'Glaucoma'"),
    ("multi", "", "empty label file"),
    ("multi", "|", "no finding named"),
    ("multi", '{"label": [0, 1]}', r"must be 4 values of 0/1"),
    ("multi", '{"label": [0, 2, 0, 0]}', r"must be 4 values of 0/1"),
])
def test_bad_label_files_name_the_file_and_the_reason(tmp_path, kind, content, reason):
    f = tmp_path / ("x.json" if content.startswith("{") else "x.txt")
    f.write_text(content)
    with pytest.raises(BadInputError, match=reason) as e:
        (ClassIndexFromFile(CLASSES) if kind == "class" else MultiHotFromFile(FINDINGS))(str(f))
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


def test_multi_hot_dictionary_twin_names_the_image(tmp_path):
    (tmp_path / "l.txt").write_text("Mass")
    d = MultiHotFromFiled("label", FINDINGS)({"image": "/x/a.png", "label": str(tmp_path / "l.txt")})
    assert d["image"] == "/x/a.png" and d["label"].tolist() == [0, 0, 1, 0]
    with pytest.raises(BadInputError, match=r"^/x/a.png: a multi-label label must be 4 values"):
        MultiHotFromFiled("label", FINDINGS)({"image": "/x/a.png", "label": [1, 0]})
    with pytest.raises(ValueError, match="unique"):
        MultiHotFromFile(["Mass", "mass"])
