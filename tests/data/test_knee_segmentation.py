"""Tests of the knee segmentation indexers: volume/mask pairs, patient-level split, bad pairs, inference lists."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from medplugin.data.knee_segmentation import (
    TolerantVolumeDataset,
    index_knee_segmentation,
    index_knee_volumes,
    kneeseg_datalist,
)
from medplugin.data.synthetic.knee import make_knee_nifti_demo
from medplugin.errors import BadInputError
from medplugin.transforms import LoadKneeVolumed


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kneeseg")
    make_knee_nifti_demo(root, n=12, shape=(4, 16, 16), seed=0, exams_per_patient=2)
    return root


def test_pairs_are_indexed_and_split_by_patient(pairs):
    dl = index_knee_segmentation(pairs, val_fraction=0.2, test_fraction=0.2, seed=1)
    entries = [e for part in dl.values() for e in part]
    assert len(entries) == 12 and all(len(dl[k]) > 0 for k in dl)
    for e in entries:
        assert e["label"].replace("/masks/", "/exams/") == e["image"]
    by_patient = {}
    for part, es in dl.items():
        for e in es:
            by_patient.setdefault(e["patient_id"], set()).add(part)
    assert len(by_patient) == 6 and all(len(parts) == 1 for parts in by_patient.values())
    assert kneeseg_datalist(pairs, val_fraction=0.2, test_fraction=0.2, seed=1) == dl


def test_images_folder_layout_and_no_labels_csv(tmp_path, pairs):
    shutil.copytree(pairs / "exams", tmp_path / "images")
    shutil.copytree(pairs / "masks", tmp_path / "masks")
    dl = index_knee_segmentation(tmp_path, val_fraction=0.25, test_fraction=0.25)
    entries = [e for part in dl.values() for e in part]
    assert len(entries) == 12 and all(e["patient_id"].startswith("knee_") for e in entries)  # exam = patient


def damage_pairs(root) -> None:
    """knee_000 loses its mask, knee_001's mask is cut, knee_002's is moved 5 mm, knee_003's exam is empty."""
    (root / "masks" / "knee_000.nii.gz").unlink()
    m = nib.load(root / "masks" / "knee_001.nii.gz")
    data, affine = np.asarray(m.dataobj).copy(), m.affine.copy()
    nib.save(nib.Nifti1Image(data[:8], affine), root / "masks" / "knee_001.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(data, shifted), root / "masks" / "knee_002.nii.gz")
    (root / "exams" / "knee_003.nii.gz").write_bytes(b"")


def test_bad_pairs_are_named_or_skipped(tmp_path, pairs):
    root = tmp_path / "bad"
    shutil.copytree(pairs, root)
    damage_pairs(root)
    with pytest.raises(BadInputError) as err:
        index_knee_segmentation(root)
    msg = str(err.value)
    assert "4 bad item(s)" in msg
    assert "knee_000.nii.gz: no mask" in msg
    assert "knee_001.nii.gz: mask shape (8, 16, 4) differs from its image's (16, 16, 4)" in msg
    assert "knee_002.nii.gz: mask affine differs from its image's (knee_002.nii.gz) by up to 5 mm" in msg
    assert "knee_003.nii.gz: image file is empty" in msg
    kept = index_knee_segmentation(root, on_bad_input="skip")
    names = {e["image"].split("/")[-1] for part in kept.values() for e in part}
    assert len(names) == 8 and not names & {f"knee_00{i}.nii.gz" for i in range(4)}


def test_argument_errors(pairs, tmp_path):
    with pytest.raises(ValueError, match="on_bad_input must be 'fail' or 'skip', got 'ignore'"):
        index_knee_segmentation(pairs, on_bad_input="ignore")
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        index_knee_segmentation(pairs, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(BadInputError, match="no exam folder"):
        index_knee_segmentation(tmp_path)


def test_inference_list_finds_nifti_npy_and_dicom_series_folders(tmp_path, pairs):
    from pydicom.data import get_testdata_file

    shutil.copy(pairs / "exams" / "knee_000.nii.gz", tmp_path / "a.nii.gz")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "b.npy", np.zeros((4, 16, 16), np.uint8))
    (tmp_path / "series1").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "series1" / "IM0001")  # no suffix: found by magic
    (tmp_path / "notes.txt").write_text("not an exam")
    entries = index_knee_volumes(tmp_path)
    assert [e["name"] for e in entries] == ["a", "series1", "sub__b"]
    assert entries[1]["image"] == str(tmp_path / "series1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no NIfTI"):
        index_knee_volumes(tmp_path / "empty")


def test_tolerant_volume_dataset_turns_failures_into_rows(tmp_path, pairs):
    shutil.copy(pairs / "exams" / "knee_000.nii.gz", tmp_path / "a.nii.gz")
    (tmp_path / "b.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    ds = TolerantVolumeDataset(index_knee_volumes(tmp_path), LoadKneeVolumed("image"), fallback_shape=[1, 4, 8, 8])
    good, bad = ds[0], ds[1]
    assert good["error"] == "" and good["image"].shape == (1, 4, 16, 16)
    np.testing.assert_allclose(good["original_affine"].numpy(), nib.load(tmp_path / "a.nii.gz").affine)
    assert bad["error"].startswith(str(tmp_path / "b.nii.gz")) and bad["image"].shape == (1, 4, 8, 8)
    assert not bad["image"].any()
