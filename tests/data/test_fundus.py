"""Fundus DR indexers: Kaggle EyePACS and APTOS 2019 layouts, patient-level splits, bad rows and files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medplugin.data.fundus import (
    class_names,
    detect_layout,
    fundus_datalist,
    index_aptos,
    index_eyepacs,
    index_fundus,
)
from medplugin.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]


def _jpeg(path: Path, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        path, format="PNG" if path.suffix == ".png" else "JPEG"
    )


def _eyepacs(root: Path, n_patients: int = 30, rows: list[str] | None = None) -> Path:
    lines = ["image,level"]
    for p in range(1, n_patients + 1):
        for eye in ("left", "right"):
            _jpeg(root / "train" / f"{p}_{eye}.jpeg", p)
            lines.append(f"{p}_{eye},{(p + (eye == 'right')) % 5}")
    (root / "trainLabels.csv").write_text("\n".join(lines + (rows or [])) + "\n")
    return root


def _aptos(root: Path, n: int = 20) -> Path:
    lines = ["id_code,diagnosis"]
    for i in range(n):
        ident = f"{i:04x}ab{i}"
        _jpeg(root / "train_images" / f"{ident}.png", i)
        lines.append(f"{ident},{i % 5}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_eyepacs_both_eyes_of_a_patient_stay_in_one_split(tmp_path):
    root = _eyepacs(tmp_path / "eyepacs")
    assert detect_layout(root) == "eyepacs"
    dl = index_fundus(root, task="grade", seed=3)
    assert sum(len(v) for v in dl.values()) == 60 and all(dl[s] for s in ("training", "validation", "test"))
    where = {}
    for split, entries in dl.items():
        for e in entries:
            assert where.setdefault(e["patient_id"], split) == split, f"patient {e['patient_id']} in two splits"
            assert Path(e["image"]).name == f"{e['patient_id']}_{e['eye']}.jpeg" and e["label"] == e["grade"]
    assert all(sum(1 for es in dl.values() for e in es if e["patient_id"] == p) == 2 for p in where)


def test_referable_task_and_labelled_test_part(tmp_path):
    root = _eyepacs(tmp_path / "e", n_patients=10)
    _jpeg(root / "test" / "99_left.jpeg")
    _jpeg(root / "test" / "99_right.jpeg")
    (root / "testLabels.csv").write_text("image,level\n99_left,3\n99_right,1\n")
    dl = index_eyepacs(root, task="referable")
    assert [(Path(e["image"]).name, e["grade"], e["label"]) for e in dl["test"]] == [
        ("99_left.jpeg", 3, 1), ("99_right.jpeg", 1, 0)]
    assert all(e["label"] == int(e["grade"] >= 2) for es in dl.values() for e in es)
    assert class_names("referable") == ["non-referable", "referable"] and len(class_names("grade")) == 5


def test_unknown_label_names_the_file_and_row(tmp_path):
    root = _eyepacs(tmp_path / "e", n_patients=3, rows=["9_left,7"])
    _jpeg(root / "train" / "9_left.jpeg")
    with pytest.raises(BadInputError, match=r"trainLabels\.csv: row 8: unknown label '7' for '9_left'"):
        index_eyepacs(root)
    dl = index_eyepacs(root, on_bad_input="skip")  # skip: the bad row is left out, the rest indexed
    assert sum(len(v) for v in dl.values()) == 6


def test_missing_image_is_reported(tmp_path):
    root = _eyepacs(tmp_path / "e", n_patients=5)
    (root / "train" / "2_right.jpeg").unlink()
    (root / "train" / "3_left.jpeg").write_bytes(b"")
    with pytest.raises(BadInputError) as err:
        index_eyepacs(root)
    msg = str(err.value)
    assert "2 bad item(s)" in msg
    assert "2_right.jpeg (trainLabels.csv row 5): image file not found" in msg
    assert "3_left.jpeg (trainLabels.csv row 6): empty file (0 bytes)" in msg


def test_aptos_layout_is_detected_and_indexed(tmp_path):
    root = _aptos(tmp_path / "aptos")
    assert detect_layout(root) == "aptos"
    dl = fundus_datalist(root, task="grade")
    entries = [e for es in dl.values() for e in es]
    assert len(entries) == 20 and all(Path(e["image"]).parent.name == "train_images" for e in entries)
    assert all(e["patient_id"] == Path(e["image"]).stem and e["eye"] == "" for e in entries)
    with pytest.raises(BadInputError, match="not a Kaggle EyePACS layout"):
        index_eyepacs(root)
    (root / "train.csv").write_text("id_code,grade\nx,1\n")
    with pytest.raises(BadInputError, match=r"train\.csv: header must name columns 'id_code' and 'diagnosis'"):
        index_aptos(root)


def test_unknown_layout_and_bad_arguments(tmp_path):
    with pytest.raises(BadInputError, match="no trainLabels.csv .* or train.csv"):
        index_fundus(tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        index_fundus(tmp_path, task="severity")


@pytest.mark.integration  # runs the medplugin command in a subprocess
def test_cli_writes_the_datalist_the_bundle_reads_for_either_task(tmp_path):
    root = _eyepacs(tmp_path / "e", n_patients=10)
    out = tmp_path / "dl.json"
    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "datalist", "eyepacs", str(root), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(out.read_text())
    assert {e["label"] for es in saved.values() for e in es} <= set(range(5))
    ref = fundus_datalist(tmp_path / "nowhere", datalist=out, task="referable")
    assert [e["image"] for e in ref["training"]] == [e["image"] for e in saved["training"]]
    assert all(e["label"] == int(e["grade"] >= 2) for es in ref.values() for e in es)
    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "datalist", "aptos", str(root), "-o",
                           str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "not an APTOS 2019 layout" in proc.stderr
