"""Inputs a bundle was never made for, built from real sample files, and the input gate's verdict read back from a
predictions.csv row (issue 16: each classification bundle flags them out of scope with the reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.io._dicom_helpers import sample_file, with_phi

OOD_PREFIX = "out-of-distribution score "
"""How the Mahalanobis check's reason starts; the header and content reasons are deterministic, it is not."""


def mr_slice(dest: Path, **changes) -> Path:
    """pydicom's real MR slice (64 x 64, Modality MR) with planted patient tags (and ``changes``)."""
    return with_phi(sample_file("MR_small.dcm"), dest, **changes)


def chest_cr(dest: Path, **changes) -> Path:
    """pydicom-data's real chest CR (RG1_UNCR: Modality CR, Body Part CHEST, View PA), with ``changes``."""
    return with_phi(sample_file("RG1_UNCR.dcm"), dest, **changes)


def colour_photograph(dest: Path) -> Path:
    """A real colour photograph (matplotlib's Grace Hopper JPEG, 512 x 600 RGB)."""
    from matplotlib import cbook

    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), dest)
    return dest


def knee_volume(dest: Path, shape: tuple[int, int, int] = (12, 64, 64)) -> Path:
    """A synthetic sagittal knee MR volume as NIfTI (the knee bundles' own generator)."""
    import nibabel as nib

    from medplugin.data.synthetic.knee import synthetic_knee

    volume = synthetic_knee(shape, condition=0, rng=0)["volume"] * 255
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), dest)
    return dest


def gate_reasons(row: dict) -> tuple[list[str], list[str]]:
    """``(header and content reasons, OOD reasons)`` of a predictions.csv row: ``out_of_scope_reason`` is the
    reasons joined with ``"; "``, header rules first, then content rules, then the OOD score."""
    text = row["out_of_scope_reason"]
    reasons = text.split("; ") if text else []
    rules = [r for r in reasons if not r.startswith(OOD_PREFIX)]
    ood = [r for r in reasons if r.startswith(OOD_PREFIX)]
    assert reasons == rules + ood, f"the OOD reason comes last: {text!r}"
    return rules, ood


def assert_flagged(row: dict, expected: list[str], probabilities: list[str]) -> None:
    """The row is out of scope with exactly the ``expected`` header/content reasons (an OOD reason may follow)
    and, under ``gate: warn``, still scored: every probability column filled, no error."""
    rules, _ = gate_reasons(row)
    assert row["in_scope"] == "false", row
    assert rules == expected, (row["file"], row["out_of_scope_reason"])
    assert row["error"] == "", row["error"]
    assert all(row[p] != "" for p in probabilities), row


def assert_in_scope(row: dict, probabilities: list[str]) -> None:
    """An input of the model's own kind: no header or content rule fails; only the (statistical) OOD score may flag
    it, and then ``in_scope`` says false."""
    rules, ood = gate_reasons(row)
    assert rules == [], (row["file"], row["out_of_scope_reason"])
    assert row["in_scope"] == ("false" if ood else "true"), row
    assert row["error"] == "" and all(row[p] != "" for p in probabilities), row


def assert_refused_unreadable(row: dict, expected: list[str], error_says: str) -> None:
    """An input of the wrong shape the bundle's reader cannot take: an error row naming the file and the reason,
    no probabilities, and the gate still flags it from the file's own header."""
    rules, ood = gate_reasons(row)
    assert row["in_scope"] == "false" and rules == expected and ood == [], (row["file"], row["out_of_scope_reason"])
    assert Path(row["file"]).name in row["error"] and error_says in row["error"], row["error"]
    assert all(v == "" for k, v in row.items() if k.startswith("prob_")), row


def gated_inference(name: str, ckpt: Path, tmp_path: Path, inputs: dict) -> dict[str, dict]:
    """Write each of ``inputs`` (file name -> a function writing that file, or a file to copy) into one folder,
    run the bundle's real inference (smoke overlay) over it once, and return its predictions.csv rows by file
    name (each input exactly once)."""
    import csv

    from tests.bundles._runner import SMOKE, run_bundle

    src, out = tmp_path / "in", tmp_path / "inf"
    src.mkdir(parents=True)
    for file_name, make in inputs.items():
        shutil.copy(make, src / file_name) if isinstance(make, Path) else make(src / file_name)
    run_bundle(name, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out)
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert sorted(rows) == sorted(inputs), sorted(rows)
    return rows
