"""Lung segmentation indexers: Montgomery County layout, images/ + masks/, bad pairs, patient-level split, CLI."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medplugin.data.lungseg import detect_lungseg_layout, index_lungseg, lungseg_datalist
from medplugin.data.splits import assert_disjoint_patients
from medplugin.errors import BadInputError
from medplugin.transforms import LoadLungMask, LoadLungMaskd

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def mc(tmp_path) -> Path:
    from medplugin.data.synthetic.chest_xray import make_lung_seg_demo

    root = tmp_path / "MontgomerySet"
    make_lung_seg_demo(root, n=10, size=48, seed=3)
    return root


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_montgomery_layout_merges_left_and_right_masks(mc):
    assert detect_lungseg_layout(mc) == ("montgomery", mc)
    assert detect_lungseg_layout(mc.parent) == ("montgomery", mc)  # the folder holding MontgomerySet/
    dl = index_lungseg(mc.parent, val_fraction=0.2, test_fraction=0.2, seed=0)
    entries = dl["training"] + dl["validation"] + dl["test"]
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 2, 2]
    assert sorted(e["name"] for e in entries) == sorted(p.stem for p in (mc / "CXR_png").glob("*.png"))
    e = entries[0]
    assert e["label"] == [str(mc / "ManualMask" / s / f"{e['name']}.png") for s in ("leftMask", "rightMask")]
    assert e["patient_id"] == e["name"].split("_")[1] and e["abnormal"] == int(e["name"][-1])
    assert_disjoint_patients(dl)
    assert index_lungseg(mc, val_fraction=0.2, test_fraction=0.2, seed=0) == dl  # same seed, same split
    # the union of the two masks is both lungs; each is a part of it
    mask = LoadLungMask()(e["label"])
    left = np.asarray(Image.open(e["label"][0])) > 0
    right = np.asarray(Image.open(e["label"][1])) > 0
    assert tuple(mask.shape) == (1, 48, 48) and set(np.unique(mask.numpy())) == {0.0, 1.0}
    np.testing.assert_array_equal(mask[0].numpy() > 0, left | right)
    assert left.any() and right.any() and not (left & right).any()


def test_missing_mask_and_size_mismatch_fail_or_skip(mc, caplog):
    names = sorted(p.stem for p in (mc / "CXR_png").glob("*.png"))
    (mc / "ManualMask" / "rightMask" / f"{names[0]}.png").unlink()
    _png(mc / "ManualMask" / "leftMask" / f"{names[1]}.png", np.zeros((40, 48)))
    with pytest.raises(BadInputError, match=r"2 bad item\(s\)") as err:
        index_lungseg(mc)
    msg = str(err.value)
    assert f"{names[0]}.png: no lung mask: ManualMask/rightMask/{names[0]}.png missing" in msg
    assert f"leftMask/{names[1]}.png: mask size 48x40 differs from its image's 48x48" in msg
    with caplog.at_level(logging.WARNING):
        dl = index_lungseg(mc, on_bad_input="skip")
    kept = {e["name"] for v in dl.values() for e in v}
    assert names[0] not in kept and names[1] not in kept and len(kept) == 8
    assert "skipping 2 bad item(s)" in caplog.text


def test_images_masks_layout_with_follow_ups_of_one_patient(tmp_path):
    g = np.random.default_rng(0)
    root = tmp_path / "set"
    # 6 patients, patient p0 with 5 follow-up images; a JPEG image with a PNG mask; a nested folder
    for p in range(6):
        for k in range(5 if p == 0 else 1):
            name = f"sub/p{p}_{k}" if p == 1 else f"p{p}_{k}"
            img, m = g.integers(0, 255, (32, 40)), np.zeros((32, 40))
            m[8:20, 5:15] = 255
            suffix = ".jpg" if p == 2 else ".png"
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save((root / "images" / name).with_suffix(suffix))
            _png((root / "masks" / name).with_suffix(".png"), m)
    assert detect_lungseg_layout(root) == ("images_masks", root)
    for seed in range(4):
        dl = index_lungseg(root, val_fraction=0.2, test_fraction=0.2, seed=seed, patient_pattern=r"^(p\d+)_\d+$")
        assert_disjoint_patients(dl)
        p0 = [s for s, v in dl.items() for e in v if e["patient_id"] == "p0"]
        assert len(p0) == 5 and len(set(p0)) == 1  # all follow-ups in one split
    entries = {e["name"]: e for v in dl.values() for e in v}
    assert entries["sub__p1_0"]["label"] == str(root / "masks" / "sub" / "p1_0.png")
    assert entries["p2_0"]["image"].endswith(".jpg")
    # without a pattern, each image is its own patient
    dl = index_lungseg(root, val_fraction=0.2, test_fraction=0.2)
    assert len({e["patient_id"] for v in dl.values() for e in v}) == 10
    with pytest.raises(BadInputError, match=r"p3_0.png: name does not match patient_pattern"):
        index_lungseg(root, patient_pattern=r"^p[012]_")


def test_unknown_layout_and_bad_arguments(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(BadInputError, match=r"no lung segmentation layout found: expected the Montgomery layout"):
        index_lungseg(tmp_path)
    with pytest.raises(BadInputError, match="dataset folder not found"):
        index_lungseg(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\).*0.6 and 0.5"):
        index_lungseg(tmp_path, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="on_bad_input must be"):
        index_lungseg(tmp_path, on_bad_input="ignore")


def test_mask_of_another_size_than_its_image_at_load_time(tmp_path):
    _png(tmp_path / "img.png", np.full((30, 40), 100))
    _png(tmp_path / "m.png", np.zeros((30, 41)))
    from medplugin.transforms.io import LoadImage2dd

    d = LoadImage2dd("image")({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "m.png")})
    with pytest.raises(BadInputError, match=r"m.png: mask size 41x30 differs from its image's 40x30"):
        LoadLungMaskd("label")(d)
    _png(tmp_path / "m2.png", np.zeros((31, 40)))
    with pytest.raises(BadInputError, match=r"m2.png: mask size 40x31 differs from .*m.png's 41x30"):
        LoadLungMask()([str(tmp_path / "m.png"), str(tmp_path / "m2.png")])


@pytest.mark.integration  # runs the medplugin command in a subprocess
def test_cli_datalist_and_demo(mc, tmp_path):
    out = tmp_path / "lung.json"
    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "datalist", "lungseg", str(mc), "-o", str(out),
                           "--val-fraction", "0.2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written == index_lungseg(mc, val_fraction=0.2, test_fraction=0.15)
    # the bundle reads the written file (relative paths resolved against its folder) instead of indexing
    rel = tmp_path / "rel"
    shutil.copytree(mc, rel / "data")
    for v in written.values():
        for e in v:
            e["image"] = str(Path(e["image"]).relative_to(mc.parent).as_posix()).replace("MontgomerySet", "data", 1)
            e["label"] = [str(Path(p).relative_to(mc.parent)).replace("MontgomerySet", "data", 1) for p in e["label"]]
    (rel / "dl.json").write_text(json.dumps(written))
    back = lungseg_datalist(None, rel / "dl.json")
    assert back["training"][0]["label"][0].startswith(str(rel / "data" / "ManualMask"))
    assert Path(back["training"][0]["image"]).is_file()
    from medplugin.cli import main

    assert main(["demo", "lung_xray_segmentation", "--out", str(tmp_path / "demo")]) == 0
    root = tmp_path / "demo" / "MontgomerySet"
    assert len(list((root / "CXR_png").glob("MCUCXR_*.png"))) == 48
    assert detect_lungseg_layout(root)[0] == "montgomery"
