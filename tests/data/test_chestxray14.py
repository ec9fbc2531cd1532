"""Tests of the NIH ChestX-ray14 indexer on CSVs and folders laid out like the real release."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from medplugin.data.chestxray14 import FINDINGS, index_chestxray14, read_bbox_list, write_datalist
from medplugin.data.splits import assert_disjoint_patients
from medplugin.errors import BadInputError

# the real headers: Data_Entry_2017.csv ends in a comma; the 2020 revision has no trailing empty column
HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
HEADER_2020 = HEADER_2017.rstrip(",")
HEADER_EXACT = (
    'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,'
    '"OriginalImage[Width, Height]","OriginalImagePixelSpacing[x, y]"'
)


def _row(pid: int, fu: int, labels: str = "No Finding", view: str = "PA") -> str:
    return f"{pid:08d}_{fu:03d}.png,{labels},{fu},{pid},{40 + pid % 30},M,{view},2500,2048,0.143,0.143"


def _release(
    root: Path,
    rows: list[str],
    header: str = HEADER_2017,
    csv_name: str = "Data_Entry_2017.csv",
    folders: int = 2,
    skip_images: tuple[str, ...] = (),
) -> Path:
    """Write a CSV and 0-byte PNG placeholders spread over images_001/images ... like the release."""
    root.mkdir(parents=True, exist_ok=True)
    (root / csv_name).write_text(header + "\n" + "\n".join(rows) + "\n")
    for i, r in enumerate(rows):
        name = r.split(",", 1)[0]
        if name in skip_images:
            continue
        folder = root / f"images_{i % folders + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return root


def _many_followups(n_patients: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_patients + 1):
        for fu in range(int(rng.integers(1, 12))):
            k = int(rng.integers(0, 3))
            labels = "|".join(sorted(rng.choice(FINDINGS, size=k, replace=False))) if k else "No Finding"
            rows.append(_row(pid, fu, labels, "PA" if rng.random() < 0.7 else "AP"))
    return rows


def test_findings_order():
    assert FINDINGS == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
        "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
    )  # fmt: skip


@pytest.mark.parametrize("header", [HEADER_2017, HEADER_2020, HEADER_EXACT])
def test_headers_labels_and_entries(tmp_path, header):
    rows = [
        _row(1, 0, "Cardiomegaly"),
        _row(1, 1, "Cardiomegaly|Emphysema"),
        _row(2, 0, "No Finding", "AP"),
        _row(3, 0, "Hernia|Pleural_Thickening|Atelectasis"),
    ]
    root = _release(tmp_path / "nih", rows, header=header)
    out = index_chestxray14(root, val_fraction=0.0, test_fraction=0.0)
    assert set(out) == {"training", "validation", "test"}
    assert out["validation"] == [] and out["test"] == []
    by_name = {Path(e["image"]).name: e for e in out["training"]}
    assert len(by_name) == 4
    e = by_name["00000001_001.png"]
    assert e["label"] == [1.0 if f in ("Cardiomegaly", "Emphysema") else 0.0 for f in FINDINGS]
    assert e["patient_id"] == "1" and e["view"] == "PA" and Path(e["image"]).is_absolute()
    assert Path(e["image"]).is_file() and "images_00" in e["image"]
    assert by_name["00000002_000.png"]["label"] == [0.0] * 14 and by_name["00000002_000.png"]["view"] == "AP"
    assert sum(by_name["00000003_000.png"]["label"]) == 3 and by_name["00000003_000.png"]["label"][13] == 1.0
    assert set(e) == {"image", "label", "patient_id", "view"}


def test_v2020_csv_preferred_and_csv_name(tmp_path):
    root = _release(tmp_path, [_row(1, 0, "Mass")], header=HEADER_2020, csv_name="Data_Entry_2017_v2020.csv")
    (root / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + _row(1, 0, "Nodule") + "\n")
    kw = dict(val_fraction=0.0, test_fraction=0.0)
    assert index_chestxray14(root, **kw)["training"][0]["label"][FINDINGS.index("Mass")] == 1.0
    out = index_chestxray14(root, csv_name="Data_Entry_2017.csv", **kw)
    assert out["training"][0]["label"][FINDINGS.index("Nodule")] == 1.0


def test_flat_images_folder(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + _row(5, 0) + "\n")
    (root / "images").mkdir()
    (root / "images" / "00000005_000.png").write_bytes(b"")
    out = index_chestxray14(root, val_fraction=0.0, test_fraction=0.0)
    assert out["training"][0]["image"] == str((root / "images" / "00000005_000.png").resolve())


def test_unknown_label_fails_with_csv_line_and_value(tmp_path):
    root = _release(tmp_path, [_row(1, 0), _row(2, 0, "Mass|Tumour"), _row(3, 0)])
    with pytest.raises(BadInputError, match=r"Data_Entry_2017\.csv: line 3: unknown finding label 'Tumour'"):
        index_chestxray14(root)


def test_skip_drops_and_counts_bad_rows(tmp_path, caplog):
    rows = [_row(p, 0) for p in range(1, 11)] + [_row(20, 0, "Tumour"), _row(21, 0, "")] + ["00000022_000.png,Mass"]
    root = _release(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="medplugin.data.chestxray14"):
        out = index_chestxray14(root, on_bad_input="skip", val_fraction=0.1, test_fraction=0.2)
    assert sum(len(v) for v in out.values()) == 10
    assert "line 12: unknown finding label 'Tumour'" in caplog.text
    assert "3 bad row(s) skipped" in caplog.text


def test_missing_column(tmp_path):
    header = "Image Index,Finding Labels,Follow-up #,Patient Age,Patient Gender,View Position"
    root = _release(tmp_path, ["00000001_000.png,No Finding,0,58,M,PA"], header=header)
    pattern = r"Data_Entry_2017\.csv: line 1: missing required column\(s\) \['Patient ID'\]"
    with pytest.raises(BadInputError, match=pattern):
        index_chestxray14(root)


def test_missing_images_fail_or_skip(tmp_path, caplog):
    rows = [_row(p, 0) for p in range(1, 21)]
    missing = ("00000003_000.png", "00000007_000.png")
    root = _release(tmp_path, rows, skip_images=missing)
    pattern = r"2 image\(s\) listed in Data_Entry_2017\.csv not found.*00000003_000\.png, 00000007_000\.png"
    with pytest.raises(BadInputError, match=pattern):
        index_chestxray14(root)
    with caplog.at_level(logging.WARNING, logger="medplugin.data.chestxray14"):
        out = index_chestxray14(root, on_bad_input="skip")
    names = {Path(e["image"]).name for part in out.values() for e in part}
    assert len(names) == 18 and not names & set(missing)
    assert "2 image(s) listed" in caplog.text


def test_patient_level_split_with_many_followups(tmp_path):
    rows = _many_followups(60)
    root = _release(tmp_path, rows, folders=3)
    out = index_chestxray14(root, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert_disjoint_patients(out)
    n = {k: len(v) for k, v in out.items()}
    total = sum(n.values())
    assert total == len(rows)
    assert all(v > 0 for v in n.values())
    assert abs(n["test"] / total - 0.2) < 0.1 and abs(n["validation"] / total - 0.1) < 0.07
    again = index_chestxray14(root, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert again == out
    other = index_chestxray14(root, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert other != out
    assert_disjoint_patients(other)


def test_official_split_lists(tmp_path):
    rows = _many_followups(30)
    root = _release(tmp_path, rows)
    names = [r.split(",", 1)[0] for r in rows]
    test_names = [n for n in names if int(n[:8]) % 5 == 0]
    train_val = [n for n in names if int(n[:8]) % 5 != 0]
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    out = index_chestxray14(root, val_fraction=0.2, seed=1)
    assert sorted(Path(e["image"]).name for e in out["test"]) == sorted(test_names)
    assert {Path(e["image"]).name for e in out["training"] + out["validation"]} == set(train_val)
    assert out["validation"]
    assert_disjoint_patients(out)


def test_official_split_must_be_patient_disjoint(tmp_path):
    rows = [_row(1, 0), _row(1, 1), _row(2, 0)]
    root = _release(tmp_path, rows)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000001_001.png\n")
    with pytest.raises(BadInputError, match=r"test_list\.txt: the official split is not patient-disjoint"):
        index_chestxray14(root)


def test_views_and_exclude_file(tmp_path):
    rows = [_row(p, 0, view="AP" if p % 2 else "PA") for p in range(1, 21)]
    root = _release(tmp_path, rows)
    out = index_chestxray14(root, views=("PA",), val_fraction=0.0, test_fraction=0.0)
    assert {e["view"] for e in out["training"]} == {"PA"} and len(out["training"]) == 10
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# known bad\n00000002_000.png\n\n00000004_000.png\n")
    out = index_chestxray14(root, views=None, exclude_file=exclude, val_fraction=0.0, test_fraction=0.0)
    names = {Path(e["image"]).name for e in out["training"]}
    assert len(names) == 18 and "00000002_000.png" not in names
    with pytest.raises(BadInputError, match=r"nope\.txt: file not found"):
        index_chestxray14(root, exclude_file=tmp_path / "nope.txt")


def test_argument_checks(tmp_path):
    root = _release(tmp_path, [_row(1, 0)])
    with pytest.raises(ValueError, match=r"on_bad_input must be one of \('fail', 'skip'\), got 'ignore'"):
        index_chestxray14(root, on_bad_input="ignore")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        index_chestxray14(root, val_fraction=1.5)
    with pytest.raises(ValueError, match=r"views must be None or a non-empty sequence.*got 'PA'"):
        index_chestxray14(root, views="PA")
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5"):
        index_chestxray14(root, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(BadInputError, match=r"nowhere: ChestX-ray14 folder not found"):
        index_chestxray14(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match=r"no ChestX-ray14 CSV found"):
        index_chestxray14(empty)


def test_read_bbox_list_real_header(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661\n"
        "00013118_008.png,Infiltrate,10,20,30,40\n"
        "00014716_007.png,Pneumothorax,1.5,2.5,3.5,4.5\n"
    )
    boxes = read_bbox_list(path)
    first = ("Atelectasis", 225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661)
    assert boxes["00013118_008.png"][0] == first
    assert boxes["00013118_008.png"][1] == ("Infiltration", 10.0, 20.0, 30.0, 40.0)
    assert boxes["00014716_007.png"] == [("Pneumothorax", 1.5, 2.5, 3.5, 4.5)]
    split = tmp_path / "split.csv"
    split.write_text("Image Index,Finding Label,x,y,w,h\na.png,Mass,1,2,3,4\n")
    assert read_bbox_list(split) == {"a.png": [("Mass", 1.0, 2.0, 3.0, 4.0)]}
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,two,3,4\n")
    pattern = r"bad\.csv: line 2: box values \['1', 'two', '3', '4'\] are not all numbers"
    with pytest.raises(BadInputError, match=pattern):
        read_bbox_list(bad)
    assert read_bbox_list(bad, on_bad_input="skip") == {}


def test_write_datalist_roundtrip(tmp_path):
    root = _release(tmp_path / "nih", _many_followups(10))
    out = index_chestxray14(root)
    path = write_datalist(out, tmp_path / "out" / "datalist.json")
    assert json.loads(path.read_text()) == out


@pytest.mark.slow
def test_full_size_csv_indexes_in_seconds(tmp_path, caplog):
    """112,120 rows (the real release's count, 30,805 patients) with only a few images on disk."""
    rng = np.random.default_rng(0)
    rows, pid, fu = [], 1, 0
    while len(rows) < 112_120:
        k = int(rng.integers(0, 3))
        labels = "|".join(sorted(rng.choice(FINDINGS, size=k, replace=False))) if k else "No Finding"
        rows.append(_row(pid, fu, labels, "PA" if rng.random() < 0.6 else "AP"))
        fu += 1
        if rng.random() < 0.27:
            pid, fu = pid + 1, 0
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + "\n".join(rows) + "\n")
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    for r in rows[::1000]:
        (folder / r.split(",", 1)[0]).write_bytes(b"")
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        out = index_chestxray14(root, on_bad_input="skip")
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).info("indexed %d CSV rows in %.2f s", len(rows), elapsed)
    assert sum(len(v) for v in out.values()) == len(rows[::1000])
    assert elapsed < 15.0, f"indexing 112,120 rows took {elapsed:.1f} s"


def test_positive_weights_and_bundle_datalist(tmp_path):
    from medplugin.data.chestxray14 import chestxray14_datalist, positive_weights

    entries = [
        {"label": [1.0] + [0.0] * 13},
        {"label": [0.0] * 14},
        {"label": [0.0] * 14},
        {"label": [1.0] + [0.0] * 13},
    ]
    w = positive_weights(entries)
    assert len(w) == 14 and w[0] == pytest.approx(1.0) and w[1] == 1.0  # 2 neg / 2 pos; no positives -> 1
    assert positive_weights(entries[1:])[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one"):
        positive_weights([])
    rows = _many_followups(12)
    root = _release(tmp_path / "nih", rows)
    out = index_chestxray14(root)
    path = write_datalist(out, tmp_path / "dl.json")
    assert chestxray14_datalist(root, path) == chestxray14_datalist(root)
    bad = json.loads(path.read_text())
    bad["training"][0]["label"] = [1, 0]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(BadInputError, match=r"training\[0\] label must be 14 values"):
        chestxray14_datalist(root, tmp_path / "bad.json")


def test_cli_datalist(tmp_path):
    from medplugin.cli import main

    rows = _many_followups(10)
    root = _release(tmp_path / "nih", rows)
    assert main(["datalist", "chestxray14", str(root), "-o", str(tmp_path / "dl.json")]) == 0
    assert json.loads((tmp_path / "dl.json").read_text()) == index_chestxray14(root)
    assert main(["datalist", "chestxray14", str(root), "-o", str(tmp_path / "dl.json")]) == 2  # never overwrites


@pytest.mark.slow
def test_cli_demo_writes_the_release_layout(tmp_path):
    from medplugin.cli import main

    assert main(["demo", "chest_xray_classification", "--out", str(tmp_path / "demo")]) == 0
    demo = tmp_path / "demo" / "chestxray14"
    for f in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        assert (demo / f).is_file()
    assert len(list((demo / "images_001" / "images").glob("*.png"))) > 200
