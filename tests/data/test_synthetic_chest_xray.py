"""Tests of the synthetic chest radiograph phantom and the demo datasets in real release layouts."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medplugin.data.chestxray14 import FINDINGS, index_chestxray14, read_bbox_list
from medplugin.data.splits import assert_disjoint_patients
from medplugin.data.synthetic.chest_xray import make_chestxray14_demo, make_lung_seg_demo, synthetic_chest_xray


def test_shapes_types_and_anatomy():
    s = synthetic_chest_xray(64, rng=0)
    assert s["image"].shape == (64, 64) and s["image"].dtype == np.uint8
    assert s["lung_mask"].dtype == np.uint8 and set(np.unique(s["lung_mask"])) == {0, 1}
    assert s["boxes"] == {}
    _, n = ndimage.label(s["lung_mask"])
    assert n == 2
    # lungs are darker than the body around them; the patient's left lung is on the image's right
    img, lung = s["image"].astype(float), s["lung_mask"].astype(bool)
    body = ndimage.binary_dilation(lung, iterations=4) & ~lung
    assert img[lung].mean() < img[body].mean() - 40
    assert ndimage.center_of_mass(s["left_lung_mask"])[1] > 32 > ndimage.center_of_mass(s["right_lung_mask"])[1]
    np.testing.assert_array_equal(s["lung_mask"], s["left_lung_mask"] | s["right_lung_mask"])


def test_deterministic_given_seed():
    a = synthetic_chest_xray(48, findings=("Nodule", "Effusion"), rng=7)
    b = synthetic_chest_xray(48, findings=("Nodule", "Effusion"), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["boxes"] == b["boxes"]
    c = synthetic_chest_xray(48, findings=("Nodule", "Effusion"), rng=8)
    assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_is_local_and_inside_its_box(finding, size):
    """The finding changes the picture inside its box much more than outside (same anatomy, same seed)."""
    seed = 11
    plain = synthetic_chest_xray(size, rng=seed)["image"].astype(float)
    s = synthetic_chest_xray(size, findings=[finding], rng=seed)
    x, y, w, h = s["boxes"][finding]
    assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= size and y + h <= size
    diff = np.abs(s["image"].astype(float) - plain)
    inside = np.zeros((size, size), dtype=bool)
    inside[y : y + h, x : x + w] = True
    assert diff[inside].mean() > 3 * diff[~inside].mean() + 5, (finding, diff[inside].mean(), diff[~inside].mean())


def test_findings_have_distinct_patterns():
    """Mean change inside the box differs in sign or size between findings: e.g. dark Pneumothorax, bright Nodule."""
    seed, size = 3, 96
    plain = synthetic_chest_xray(size, rng=seed)["image"].astype(float)
    signed = {}
    for f in FINDINGS:
        s = synthetic_chest_xray(size, findings=[f], rng=seed)
        x, y, w, h = s["boxes"][f]
        signed[f] = (s["image"].astype(float) - plain)[y : y + h, x : x + w].mean()
    assert signed["Pneumothorax"] < 0 and signed["Emphysema"] < 0
    assert signed["Nodule"] > 0 and signed["Mass"] > 0 and signed["Effusion"] > 0


def test_all_findings_at_once():
    s = synthetic_chest_xray(64, findings=FINDINGS, rng=1)
    assert set(s["boxes"]) == set(FINDINGS)


def test_argument_checks():
    with pytest.raises(ValueError, match=r"size must be an int >= 32, got 16"):
        synthetic_chest_xray(16)
    with pytest.raises(ValueError, match=r"unknown finding\(s\) \['Tumour'\]"):
        synthetic_chest_xray(64, findings=["Tumour"])
    with pytest.raises(ValueError, match=r"each finding can be planted once, got \['Mass', 'Mass'\]"):
        synthetic_chest_xray(64, findings=["Mass", "Mass"])
    with pytest.raises(ValueError, match=r"findings must be a sequence of finding names, got the string 'Mass'"):
        synthetic_chest_xray(64, findings="Mass")
    with pytest.raises(ValueError, match=r"rng must be None, an int seed or a numpy Generator, got str 'x'"):
        synthetic_chest_xray(64, rng="x")
    with pytest.raises(ValueError, match=r"n_patients must be an int >= 1, got 0"):
        make_chestxray14_demo("unused", n_patients=0)


def test_chestxray14_demo_layout_and_index(tmp_path):
    info = make_chestxray14_demo(tmp_path / "nih", n_patients=12, size=48, seed=0)
    root = Path(info["root"])
    names = sorted(p.name for p in (root / "images_001" / "images").iterdir())
    assert len(names) == info["n_images"] > 12  # several follow-ups per patient
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) for n in names)
    with Image.open(root / "images_001" / "images" / names[0]) as im:
        assert im.mode == "L" and im.size == (48, 48)
    lines = (root / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    assert (root / "BBox_List_2017.csv").read_text().splitlines()[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    rows = list(csv.reader(lines[1:]))
    assert {r[0] for r in rows} == set(names)
    assert all(r[3] == str(int(r[0][:8])) for r in rows)  # Patient ID without leading zeros, as in the release

    test = set((root / "test_list.txt").read_text().split())
    train_val = set((root / "train_val_list.txt").read_text().split())
    assert test and train_val and not test & train_val and test | train_val == set(names)
    assert not {n[:8] for n in test} & {n[:8] for n in train_val}

    out = index_chestxray14(root, val_fraction=0.2, seed=0)
    assert_disjoint_patients(out)
    assert {Path(e["image"]).name for e in out["test"]} == test
    by_name = {Path(e["image"]).name: e for part in out.values() for e in part}

    boxes = read_bbox_list(root / "BBox_List_2017.csv")
    assert boxes
    for name, items in boxes.items():
        label = by_name[name]["label"]
        for finding, x, y, w, h in items:
            assert label[FINDINGS.index(finding)] == 1.0
            assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48
    # every image with findings has its boxes
    assert {n for n, e in by_name.items() if any(e["label"])} == set(boxes)


def test_chestxray14_demo_is_deterministic(tmp_path):
    a = make_chestxray14_demo(tmp_path / "a", n_patients=4, size=32, seed=5)
    b = make_chestxray14_demo(tmp_path / "b", n_patients=4, size=32, seed=5)
    for rel in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "test_list.txt", "train_val_list.txt"):
        assert (Path(a["root"]) / rel).read_bytes() == (Path(b["root"]) / rel).read_bytes()
    for p in (Path(a["root"]) / "images_001" / "images").iterdir():
        assert p.read_bytes() == (Path(b["root"]) / "images_001" / "images" / p.name).read_bytes()


def test_lung_seg_demo_layout(tmp_path):
    info = make_lung_seg_demo(tmp_path / "mc", n=4, size=40, seed=2)
    root = Path(info["root"])
    assert len(info["images"]) == 4
    for name in info["images"]:
        assert re.fullmatch(r"MCUCXR_\d{4}_[01]\.png", name)
        image = np.asarray(Image.open(root / "CXR_png" / name))
        left = np.asarray(Image.open(root / "ManualMask" / "leftMask" / name))
        right = np.asarray(Image.open(root / "ManualMask" / "rightMask" / name))
        assert image.shape == left.shape == right.shape == (40, 40)
        assert set(np.unique(left)) == {0, 255} and set(np.unique(right)) == {0, 255}
        assert not np.any((left > 0) & (right > 0))
        assert ndimage.center_of_mass(left)[1] > ndimage.center_of_mass(right)[1]
        assert image[left > 0].mean() < image[(left == 0) & (right == 0)].mean()
