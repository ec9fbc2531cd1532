"""Knee datalists: MRNet layout, clinical layout, layout detection, class and sample weights."""

from __future__ import annotations

import csv
import os
import shutil

import pytest
import torch

from medplugin.data.knee import (
    ACL_CLASSES,
    class_weights,
    detect_knee_layout,
    index_knee,
    index_knee_dataset,
    index_mrnet,
    sample_weights,
)
from medplugin.data.splits import assert_disjoint_patients
from medplugin.data.synthetic.knee import make_knee_nifti_demo, make_mrnet_demo
from medplugin.errors import BadInputError


@pytest.fixture(scope="module")
def mrnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrnet")
    info = make_mrnet_demo(root, n_train=20, n_valid=6, slices=(3, 4), size=16, seed=0)
    return root, info


@pytest.fixture(scope="module")
def knee_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("knee")
    info = make_knee_nifti_demo(root, n=24, shape=(3, 16, 16), seed=0, exams_per_patient=2)
    return root, info


@pytest.fixture
def mrnet_copy(mrnet_root, tmp_path):
    root = tmp_path / "mrnet"
    shutil.copytree(mrnet_root[0], root)
    return root


@pytest.fixture
def knee_copy(knee_root, tmp_path):
    root = tmp_path / "knee"
    shutil.copytree(knee_root[0], root)
    return root


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


# ---------------------------------------------------------------- MRNet


@pytest.mark.parametrize("task", ["acl", "abnormal", "meniscus"])
def test_index_mrnet_parts_labels_and_paths(mrnet_root, task):
    root, info = mrnet_root
    dl = index_mrnet(root, task=task, plane="coronal", val_fraction=0.25, seed=1)
    assert set(dl) == {"training", "validation", "test"}
    # MRNet's valid/ is our test; validation is carved from train/
    assert sorted(e["patient_id"] for e in dl["test"]) == [f"{i:04d}" for i in range(20, 26)]
    assert sorted(e["patient_id"] for e in dl["training"] + dl["validation"]) == [f"{i:04d}" for i in range(20)]
    assert 3 <= len(dl["validation"]) <= 7
    assert_disjoint_patients(dl)
    for part, entries in dl.items():
        split = "valid" if part == "test" else "train"
        for e in entries:
            assert set(e) == {"image", "label", "patient_id"}
            assert e["image"] == os.path.join(str(root), split, "coronal", f"{e['patient_id']}.npy")
            assert os.path.isfile(e["image"])
            assert e["label"] == info["labels"][task][e["patient_id"]]


def test_index_mrnet_deterministic_and_no_validation(mrnet_root):
    root, _ = mrnet_root
    assert index_mrnet(root, seed=3) == index_mrnet(root, seed=3)
    dl = index_mrnet(root, val_fraction=0)
    assert dl["validation"] == [] and len(dl["training"]) == 20


def test_index_mrnet_argument_errors(mrnet_root):
    root, _ = mrnet_root
    with pytest.raises(ValueError, match=r"task must be one of .*got 'pcl'"):
        index_mrnet(root, task="pcl")
    with pytest.raises(ValueError, match=r"plane must be one of .*got 'oblique'"):
        index_mrnet(root, plane="oblique")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        index_mrnet(root, val_fraction=1.5)


def test_index_mrnet_bad_csv_rows(mrnet_copy):
    csv_path = mrnet_copy / "train-acl.csv"
    rows = list(csv.reader(open(csv_path)))
    _write_csv(csv_path, rows[:3] + [[rows[3][0], "2"]] + rows[4:])
    with pytest.raises(BadInputError, match=r"train-acl\.csv: row 4: label '2' for exam 0003 is not 0 or 1"):
        index_mrnet(mrnet_copy)
    _write_csv(csv_path, rows[:1] + [["abc", "1"]])
    with pytest.raises(BadInputError, match=r"train-acl\.csv: row 2: exam id 'abc' is not a number"):
        index_mrnet(mrnet_copy)
    _write_csv(csv_path, rows[:1] + [["7"]])
    with pytest.raises(BadInputError, match=r"row 2: expected 'id,label', got \['7'\]"):
        index_mrnet(mrnet_copy)
    _write_csv(csv_path, rows + [rows[0]])
    with pytest.raises(BadInputError, match=r"row 21: exam 0000 is listed twice \(first on row 1\)"):
        index_mrnet(mrnet_copy)
    _write_csv(csv_path, [["id", "label"]] + rows)  # a header row is tolerated
    assert len(index_mrnet(mrnet_copy, val_fraction=0)["training"]) == 20


def test_index_mrnet_missing_files(mrnet_copy):
    os.remove(mrnet_copy / "train" / "sagittal" / "0005.npy")
    with pytest.raises(BadInputError, match=r"train-acl\.csv: row 6: exam 0005 has no volume file .*0005\.npy"):
        index_mrnet(mrnet_copy)
    index_mrnet(mrnet_copy, plane="axial")  # other planes are complete
    os.remove(mrnet_copy / "valid-meniscus.csv")
    with pytest.raises(BadInputError, match=r"valid-meniscus\.csv: label CSV not found"):
        index_mrnet(mrnet_copy, task="meniscus", plane="axial")


# ---------------------------------------------------------------- clinical layout


def test_index_knee_four_classes_patient_level(knee_root):
    root, info = knee_root
    dl = index_knee(root, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert_disjoint_patients(dl)
    entries = [e for part in dl.values() for e in part]
    assert len(entries) == 24 and all(len(part) > 0 for part in dl.values())
    for e in entries:
        exam = os.path.basename(e["image"])[: -len(".nii.gz")]
        assert e["label"] == info["labels"][exam] and 0 <= e["label"] < len(ACL_CLASSES)
        assert e["patient_id"] == info["patients"][exam]
    # the two exams of a patient are in one part
    for part in dl.values():
        pids = [e["patient_id"] for e in part]
        assert all(pids.count(p) == 2 for p in pids)


def test_index_knee_binary_merges_1_to_3(knee_root):
    root, info = knee_root
    four = index_knee(root, label_mode="four", seed=2)
    binary = index_knee(root, label_mode="binary", seed=2)
    four_by_image = {e["image"]: e["label"] for part in four.values() for e in part}
    binary_by_image = {e["image"]: e["label"] for part in binary.values() for e in part}
    assert set(four_by_image) == set(binary_by_image)
    assert set(four_by_image.values()) == {0, 1, 2, 3}
    for image, label in four_by_image.items():
        assert binary_by_image[image] == (0 if label == 0 else 1)
    assert_disjoint_patients(binary)


def test_index_knee_exam_is_patient_without_column_and_masks(knee_copy):
    rows = list(csv.reader(open(knee_copy / "labels.csv")))
    _write_csv(knee_copy / "labels.csv", [r[:2] for r in rows])
    dl = index_knee(knee_copy, mask_dir="masks", seed=0)
    for e in (e for part in dl.values() for e in part):
        exam = os.path.basename(e["image"])[: -len(".nii.gz")]
        assert e["patient_id"] == exam
        assert e["mask"] == os.path.join(str(knee_copy), "masks", f"{exam}.nii.gz")


def test_index_knee_dicom_folder_exam(knee_copy):
    os.remove(knee_copy / "exams" / "knee_000.nii.gz")
    (knee_copy / "exams" / "knee_000").mkdir()  # a DICOM series folder stands for the exam
    dl = index_knee(knee_copy)
    images = [e["image"] for part in dl.values() for e in part]
    assert os.path.join(str(knee_copy), "exams", "knee_000") in images


def test_index_knee_bad_csv(knee_copy):
    path = knee_copy / "labels.csv"
    rows = list(csv.reader(open(path)))
    _write_csv(path, rows[:3] + [[rows[3][0], "7", rows[3][2]]] + rows[4:])
    with pytest.raises(BadInputError, match=r"labels\.csv: row 4: label '7' of exam 'knee_002' is not one of 0-3"):
        index_knee(knee_copy)
    _write_csv(path, rows[:3] + [[rows[3][0], "partial", rows[3][2]]] + rows[4:])
    with pytest.raises(BadInputError, match=r"row 4: label 'partial'"):
        index_knee(knee_copy)
    _write_csv(path, [["exam", "grade"]] + [r[:2] for r in rows[1:]])
    with pytest.raises(BadInputError, match=r"labels\.csv: missing column\(s\) \['label'\]; found \['exam', 'grade'\]"):
        index_knee(knee_copy)
    _write_csv(path, rows + [["knee_099", "1", "patient_099"]])
    with pytest.raises(BadInputError, match=r"row 26: exam 'knee_099' has no image: looked for .*knee_099\.nii\.gz"):
        index_knee(knee_copy)
    _write_csv(path, rows + [rows[1]])
    with pytest.raises(BadInputError, match=r"row 26: exam 'knee_000' is listed twice \(first on row 2\)"):
        index_knee(knee_copy)
    _write_csv(path, rows)
    os.remove(knee_copy / "masks" / "knee_001.nii.gz")
    with pytest.raises(BadInputError, match=r"row 3: exam 'knee_001' has no mask"):
        index_knee(knee_copy, mask_dir="masks")
    os.remove(path)
    with pytest.raises(BadInputError, match=r"labels\.csv: label CSV not found"):
        index_knee(knee_copy)


def test_index_knee_argument_errors(knee_root):
    root, _ = knee_root
    with pytest.raises(ValueError, match="label_mode must be 'four' or 'binary', got 'three'"):
        index_knee(root, label_mode="three")
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5"):
        index_knee(root, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got -0.1"):
        index_knee(root, test_fraction=-0.1)


# ---------------------------------------------------------------- layout detection


def test_detect_and_dispatch(mrnet_root, knee_root, tmp_path):
    assert detect_knee_layout(mrnet_root[0]) == "mrnet"
    assert detect_knee_layout(knee_root[0]) == "knee"
    mrnet = index_mrnet(mrnet_root[0], task="abnormal", seed=4)
    assert index_knee_dataset(mrnet_root[0], task="abnormal", seed=4) == mrnet
    assert index_knee_dataset(knee_root[0], label_mode="binary") == index_knee(knee_root[0], label_mode="binary")
    with pytest.raises(BadInputError, match="neither the MRNet layout .* nor the clinical knee layout"):
        detect_knee_layout(tmp_path)
    with pytest.raises(BadInputError, match="nowhere: data set folder not found"):
        detect_knee_layout(tmp_path / "nowhere")


# ---------------------------------------------------------------- weights


def test_class_weights_inverse_frequency():
    entries = [{"label": 0}] * 6 + [{"label": 1}] * 3 + [{"label": 2}] * 1
    w = class_weights(entries, 4)
    assert w.dtype == torch.float32 and w.shape == (4,)
    # w_c = N / (K_present * n_c): 10 / (3 * n_c); an absent class gets 0
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 10 / 3, 0.0]))
    assert abs(sum(w[e["label"]].item() for e in entries) / len(entries) - 1) < 1e-6  # mean weight per image 1
    with pytest.raises(ValueError, match=r"entry 2 has label 4, expected an int in \[0, 4\)"):
        class_weights([{"label": 0}, {"label": 1}, {"label": 4}], 4)
    with pytest.raises(ValueError, match="entries is empty"):
        class_weights([], 2)


def test_sample_weights_balance_classes():
    entries = [{"label": 0}] * 6 + [{"label": 1}] * 2
    w = sample_weights(entries)
    assert w == [1 / 6] * 6 + [1 / 2] * 2
    assert sum(w[:6]) == pytest.approx(sum(w[6:]))  # each class has the same total weight
    sampler = torch.utils.data.WeightedRandomSampler(w, num_samples=4000, generator=torch.Generator().manual_seed(0))
    drawn = [entries[i]["label"] for i in sampler]
    assert abs(drawn.count(1) / len(drawn) - 0.5) < 0.05
    with pytest.raises(ValueError, match="entry 0 has label 'x'"):
        sample_weights([{"label": "x"}], num_classes=2)


def test_index_knee_reads_excel_csv_with_bom(knee_copy):
    path = knee_copy / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    dl = index_knee(knee_copy)
    assert sum(len(p) for p in dl.values()) == 24
