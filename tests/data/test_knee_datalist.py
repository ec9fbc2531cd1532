"""The knee classification bundle's data entry points: datalist by layout, label modes, bad rows, inference index."""

from __future__ import annotations

import numpy as np
import pytest

from medplugin.data.knee import index_knee, index_knee_inputs, index_mrnet, knee_datalist
from medplugin.data.synthetic.knee import make_knee_nifti_demo, make_mrnet_demo
from medplugin.errors import BadInputError


def test_mrnet_layout_needs_binary_and_bad_volumes_fail_or_skip(tmp_path):
    root = tmp_path / "mrnet"
    make_mrnet_demo(root, n_train=8, n_valid=4, slices=(4, 5), size=16, seed=0)
    with pytest.raises(ValueError, match="MRNet layout has binary labels .*--label_mode binary"):
        knee_datalist(root, label_mode="four")
    dl = knee_datalist(root, label_mode="binary", val_fraction=0.25)
    assert len(dl["test"]) == 4 and len(dl["training"]) + len(dl["validation"]) == 8
    (root / "train" / "sagittal" / "0003.npy").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"0003\.npy: empty file"):
        index_mrnet(root)
    skipped = index_mrnet(root, on_bad_input="skip", val_fraction=0.25)
    assert "0003" not in {e["patient_id"] for s in skipped.values() for e in s}
    assert sum(len(v) for v in skipped.values()) == 11


def test_clinical_layout_skip_leaves_the_bad_row_out(tmp_path):
    root = tmp_path / "knee"
    make_knee_nifti_demo(root, n=8, shape=(3, 16, 16), seed=0)
    with open(root / "labels.csv", "a") as f:
        f.write("knee_999,2\n")
    with pytest.raises(BadInputError, match="knee_999' has no image"):
        index_knee(root)
    dl = index_knee(root, on_bad_input="skip", val_fraction=0.25, test_fraction=0.25)
    assert sum(len(v) for v in dl.values()) == 8


def test_inference_index_finds_nifti_npy_and_dicom_series_folders(tmp_path):
    (tmp_path / "a" / "series").mkdir(parents=True)
    (tmp_path / "x.nii.gz").write_bytes(b"1")
    np.save(tmp_path / "a" / "0001.npy", np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "a" / "series" / "IM1").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    (tmp_path / "notes.txt").write_text("not an exam")
    entries = index_knee_inputs(tmp_path)
    assert [e["name"] for e in entries] == ["a__0001", "a__series", "x"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no NIfTI"):
        index_knee_inputs(tmp_path / "empty")
    with pytest.raises(BadInputError, match="input folder not found"):
        index_knee_inputs(tmp_path / "missing")


def test_inference_index_gives_images_that_are_not_exams_an_error_row(tmp_path):
    """A photograph, a radiograph or a lone DICOM file beside the exams is never dropped silently: an entry whose
    error names the file and says it is not a knee exam (the gate flags its dimensions at inference)."""
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM1").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    (tmp_path / "x.nii.gz").write_bytes(b"1")
    (tmp_path / "photo.JPG").write_bytes(b"\xff\xd8")
    (tmp_path / "lone").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)  # a DICOM file outside a series folder
    (tmp_path / "notes.txt").write_text("not an exam")
    entries = index_knee_inputs(tmp_path)
    assert [e["name"] for e in entries] == ["series", "x", "lone_not_an_exam", "photo_not_an_exam"]
    assert [e.get("error", "") for e in entries[:2]] == ["", ""]
    for e in entries[2:]:
        assert e["error"].startswith(f"{e['path']}: an image file, not a knee exam (NIfTI, MRNet .npy or a folder per")
    only_photos = tmp_path / "photos"
    only_photos.mkdir()
    (only_photos / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(BadInputError, match="no NIfTI"):  # nothing to infer on: the run stops, as for no files
        index_knee_inputs(only_photos)
