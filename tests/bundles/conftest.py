"""The bundles' tiny synthetic datasets, in each real release's layout: one fixture per bundle, shared by its
own tests and the reliability tests that run every bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

KNEE_SEG_SHAPE = (
    16,
    32,
    32,
)  # (slices, H, W) of the smoke volumes; smoke.yaml's image_size 32 is the in-plane patch size


@pytest.fixture(scope="module")
def cxr_demo(tmp_path_factory) -> Path:
    """A tiny ChestX-ray14-layout release: 24 patients with follow-ups, 64x64, official split lists, boxes."""
    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo

    root = tmp_path_factory.mktemp("cxr") / "nih"
    make_chestxray14_demo(root, n_patients=24, size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def lung_demo(tmp_path_factory) -> Path:
    """12 synthetic radiographs (64x64) in the Montgomery layout: 8 training, 2 validation, 2 test images."""
    from medplugin.data.synthetic.chest_xray import make_lung_seg_demo

    root = tmp_path_factory.mktemp("lung_demo") / "MontgomerySet"
    make_lung_seg_demo(root, n=12, size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def fundus_demo(tmp_path_factory):
    """8 training + 3 test patients (two eyes each, grades 0-4 in turn) of 64x64 synthetic photographs."""
    from medplugin.data.synthetic.fundus import make_eyepacs_demo

    root = tmp_path_factory.mktemp("fundus_demo") / "eyepacs"
    make_eyepacs_demo(root, n_patients=8, size=64, seed=0, n_test_patients=3)
    return root


@pytest.fixture(scope="module")
def knee_nifti(tmp_path_factory) -> Path:
    """16 clinical-layout NIfTI exams (8 x 32 x 32, four conditions balanced) with ACL masks."""
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    return Path(make_knee_nifti_demo(tmp_path_factory.mktemp("knee_nifti"), n=16, shape=(8, 32, 32), seed=0)["root"])


@pytest.fixture(scope="module")
def knee_seg_demo(tmp_path_factory) -> Path:
    """8 synthetic sagittal knee volumes 16x32x32 with ACL masks, NIfTI, 2 exams per patient."""
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    out = tmp_path_factory.mktemp("knee_seg_demo")
    return Path(make_knee_nifti_demo(out, n=8, shape=KNEE_SEG_SHAPE, seed=1, exams_per_patient=2)["root"])
