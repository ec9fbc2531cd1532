"""Synthetic knee MRI phantoms with an anterior cruciate ligament (ACL) whose continuity encodes the diagnosis.

The phantoms imitate sagittal proton-density knee MRI as in MRNet (Bien et al. 2018, "Deep-learning-assisted
diagnosis for knee magnetic resonance imaging", PLOS Medicine): bright femur above, bright tibia below, grey
soft tissue, and a dark oblique band (the ACL, low signal on MRI) running from the posterior femur to the
anterior tibia in the central slices. A tear shows as bright fluid replacing the dark fibres.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from medplugin.data.knee import ACL_CLASSES

__all__ = ["synthetic_knee", "make_mrnet_demo", "make_knee_nifti_demo", "KNEE_DEMO_AFFINE"]

logger = logging.getLogger(__name__)

# (i, j, k) = (col, row, slice) -> RAS mm: columns run anterior (0.5 mm), rows run inferior (0.5 mm) and
# slices run left-to-right (3 mm), as in a sagittal knee acquisition.
KNEE_DEMO_AFFINE = np.array(
    [[0.0, 0.0, 3.0, -12.0], [0.5, 0.0, 0.0, -40.0], [0.0, -0.5, 0.0, 35.0], [0.0, 0.0, 0.0, 1.0]]
)

_FEMUR, _TIBIA, _SOFT, _ACL, _FLUID, _MENISCUS = 0.8, 0.75, 0.35, 0.06, 0.95, 0.1


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def synthetic_knee(
    shape: tuple[int, int, int] = (12, 64, 64),
    condition: int = 0,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.04,
    meniscus_tear: bool = False,
) -> dict:
    """Make one sagittal knee phantom whose ACL reflects ``condition``.

    The ACL is a dark oblique band between the femur and the tibia in the central slices (about 30% of the
    slices, at least one). Its continuity encodes the condition, indexed as
    :data:`medplugin.data.knee.ACL_CLASSES`: 0 ``healthy`` (intact band), 1 ``minor_strain`` (band thinned to
    about half its width), 2 ``partial_rupture`` (bright fluid cuts one side of the band over its middle third,
    the other side stays continuous), 3 ``complete_rupture`` (fluid cuts the band over its whole width). The
    geometry (positions, angle, width) and intensities vary a little with ``rng``; Gaussian noise is added.

    Args:
        shape: ``(slices, H, W)``, at least ``(1, 16, 16)``.
        condition: 0-3 as above.
        rng: a numpy ``Generator`` or a seed; ``None`` draws a fresh, unseeded generator.
        noise: standard deviation of the added Gaussian noise (intensities are in [0, 1]).
        meniscus_tear: draw a bright line through the dark posterior meniscus wedge (MRNet's meniscus task).

    Returns:
        ``{"volume": float32 (S, H, W) in [0, 1], "mask": uint8 (S, H, W) ACL region (the band, including any
        tear gap: the region to segment), "bbox": (s0, r0, c0, s1, r1, c1) end-exclusive box of the mask,
        "condition": int}``.

    Raises:
        ValueError: bad ``shape``, ``condition`` or ``noise``.
    """
    if len(shape) != 3 or shape[0] < 1 or shape[1] < 16 or shape[2] < 16:
        raise ValueError(f"shape must be (slices >= 1, H >= 16, W >= 16), got {tuple(shape)}.")
    if condition not in range(len(ACL_CLASSES)):
        raise ValueError(f"condition must be one of 0-3 {ACL_CLASSES}, got {condition!r}.")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}.")
    g = _generator(rng)
    s, h, w = (int(v) for v in shape)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    j = lambda scale: float(g.uniform(-scale, scale))  # noqa: E731 - small jitter

    femur_bottom = h * (0.36 + j(0.03))
    tibia_top = h * (0.64 + j(0.03))
    plane = np.full((h, w), _SOFT + j(0.04), np.float32)
    # femur: a block with a rounded (condylar) lower edge; tibia: a flat plateau
    condyle = femur_bottom - (h * 0.08) * ((cols - w * 0.5) / (w * 0.5)) ** 2
    plane[rows < condyle] = _FEMUR + j(0.04)
    plane[rows >= tibia_top] = _TIBIA + j(0.04)
    # posterior meniscus: a dark wedge in the joint space
    men = (cols > w * 0.72) & (cols < w * 0.9) & (rows >= tibia_top - h * 0.06) & (rows < tibia_top)
    men &= (rows - (tibia_top - h * 0.06)) >= -(cols - w * 0.81) * 0.5
    plane[men] = _MENISCUS
    if meniscus_tear:
        line = men & (np.abs(rows - (tibia_top - h * 0.03)) < max(0.6, h * 0.008))
        plane[line] = _FLUID

    # ACL: from the posterior femur to the anterior tibia (columns run anterior in our layout)
    p0 = np.array([femur_bottom - h * 0.02, w * (0.62 + j(0.03))], np.float32)  # (row, col) femoral end
    p1 = np.array([tibia_top + h * 0.02, w * (0.38 + j(0.03))], np.float32)  # tibial end
    d = p1 - p0
    length = float(np.hypot(*d))
    t = ((rows - p0[0]) * d[0] + (cols - p0[1]) * d[1]) / length**2
    signed = ((rows - p0[0]) * d[1] - (cols - p0[1]) * d[0]) / length  # signed distance across the band
    half = max(1.3, 0.045 * min(h, w)) * (1 + j(0.1))
    band = (t >= 0) & (t <= 1) & (np.abs(signed) <= half)
    gap = (t >= 0.36) & (t <= 0.64)
    fibres = band.copy()
    if condition == 1:
        fibres &= np.abs(signed) <= half * 0.45
    elif condition == 2:
        fibres &= ~(gap & (signed > -half * 0.1))
    elif condition == 3:
        fibres &= ~gap
    fluid = band & ~fibres if condition >= 2 else np.zeros_like(band)

    n_acl = max(1, round(s * 0.3))
    first = (s - n_acl) // 2
    volume = np.repeat(plane[None], s, axis=0)
    mask = np.zeros((s, h, w), np.uint8)
    for k in range(first, first + n_acl):
        volume[k][band] = _SOFT
        volume[k][fibres] = _ACL
        volume[k][fluid] = _FLUID
        mask[k][band] = 1
    if noise:
        volume = volume + g.normal(0.0, noise, volume.shape).astype(np.float32)
    volume = np.clip(volume, 0.0, 1.0).astype(np.float32)
    idx = np.nonzero(mask)
    bbox = tuple(int(v.min()) for v in idx) + tuple(int(v.max()) + 1 for v in idx)
    return {"volume": volume, "mask": mask, "bbox": bbox, "condition": int(condition)}


def _to_uint8(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.round(volume * 255.0), 0, 255).astype(np.uint8)


def _resize(volume: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    factors = [o / i for o, i in zip(out_shape, volume.shape)]
    out = zoom(volume, factors, order=1, grid_mode=True, mode="nearest")
    return out[: out_shape[0], : out_shape[1], : out_shape[2]]


def _balanced_conditions(n: int, g: np.random.Generator) -> np.ndarray:
    return g.permutation(np.resize(np.arange(len(ACL_CLASSES)), n))


def make_mrnet_demo(
    out_dir: str | os.PathLike,
    n_train: int = 16,
    n_valid: int = 8,
    slices: tuple[int, int] = (8, 12),
    size: int = 64,
    seed: int = 0,
) -> dict:
    """Write a small synthetic data set in the exact Stanford MRNet layout (Bien et al. 2018, PLOS Medicine).

    Layout: ``train/{sagittal,coronal,axial}/0000.npy`` ... and ``valid/...`` (``uint8``, ``(slices, size,
    size)``, ids zero-padded to 4 digits, validation ids following the training ids as in MRNet), and
    ``train-acl.csv``, ``train-abnormal.csv``, ``train-meniscus.csv`` (and the ``valid-`` ones) without a
    header, rows ``0000,1``. The sagittal volume is :func:`synthetic_knee`; coronal and axial are linear
    reslices of it to ``size x size`` with a slice count drawn from ``slices``. Conditions are balanced over
    the four :data:`~medplugin.data.knee.ACL_CLASSES`. Labels: ``acl = condition >= 2`` (a partial or complete
    rupture is a tear, as in MRNet's "ACL tear"; a minor strain is not), ``abnormal = condition >= 1 or
    meniscus tear``, ``meniscus`` = a drawn meniscus tear (about one exam in three).

    Args:
        out_dir: the data set root (created).
        n_train: exams under ``train/``.
        n_valid: exams under ``valid/``.
        slices: inclusive range of slice counts per plane.
        size: in-plane size of every plane.
        seed: seed of the local generator; the same seed writes the same data.

    Returns:
        ``{"root": str, "conditions": {exam_id: condition}, "labels": {task: {exam_id: label}}}``.

    Raises:
        ValueError: bad counts, slice range or size.
    """
    if n_train < 1 or n_valid < 1:
        raise ValueError(f"n_train and n_valid must be >= 1, got n_train={n_train}, n_valid={n_valid}.")
    if len(slices) != 2 or not 2 <= slices[0] <= slices[1]:
        raise ValueError(f"slices must be (min, max) with 2 <= min <= max, got {slices}.")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}.")
    g = np.random.default_rng(seed)
    root = Path(out_dir)
    conditions: dict[str, int] = {}
    labels: dict[str, dict[str, int]] = {"acl": {}, "abnormal": {}, "meniscus": {}}
    exam = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows: dict[str, list[tuple[str, int]]] = {t: [] for t in labels}
        for cond in _balanced_conditions(n, g):
            eid = f"{exam:04d}"
            exam += 1
            meniscus = bool(g.random() < 1 / 3)
            n_sag, n_cor, n_ax = (int(g.integers(slices[0], slices[1] + 1)) for _ in range(3))
            sag = synthetic_knee((n_sag, size, size), int(cond), rng=g, meniscus_tear=meniscus)["volume"]
            planes = {
                "sagittal": sag,  # (L-R, S-I, A-P)
                "coronal": _resize(sag.transpose(2, 1, 0), (n_cor, size, size)),  # slices A-P; (S-I, L-R)
                "axial": _resize(sag.transpose(1, 2, 0), (n_ax, size, size)),  # slices S-I; (A-P, L-R)
            }
            for plane, vol in planes.items():
                (root / split / plane).mkdir(parents=True, exist_ok=True)
                np.save(root / split / plane / f"{eid}.npy", _to_uint8(vol), allow_pickle=False)
            conditions[eid] = int(cond)
            exam_labels = {"acl": int(cond >= 2), "abnormal": int(cond >= 1 or meniscus), "meniscus": int(meniscus)}
            for task, label in exam_labels.items():
                labels[task][eid] = label
                rows[task].append((eid, label))
        for task, task_rows in rows.items():
            with open(root / f"{split}-{task}.csv", "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(task_rows)
    logger.info("wrote a synthetic MRNet-layout data set (%d train, %d valid exams) to %s", n_train, n_valid, root)
    return {"root": str(root), "conditions": conditions, "labels": labels}


def make_knee_nifti_demo(
    out_dir: str | os.PathLike,
    n: int = 12,
    shape: tuple[int, int, int] = (8, 32, 32),
    seed: int = 0,
    exams_per_patient: int = 1,
) -> dict:
    """Write a small synthetic clinical knee data set: NIfTI exams, ACL masks and a label CSV.

    Layout: ``exams/<exam>.nii.gz`` (sagittal phantoms from :func:`synthetic_knee`, ``float32``), ``masks/
    <exam>.nii.gz`` (``uint8`` ACL region, same affine) and ``labels.csv`` with header ``exam,label`` (labels
    0-3 as :data:`~medplugin.data.knee.ACL_CLASSES`), plus a ``patient`` column when ``exams_per_patient > 1``.
    Every image has the non-identity affine :data:`KNEE_DEMO_AFFINE` (0.5 x 0.5 mm in plane, 3 mm slices,
    slices along left-right), so :func:`medplugin.io.mrnet.read_knee_volume` returns the phantom's
    ``(slices, H, W)`` array unchanged.

    Args:
        out_dir: the data set root (created).
        n: number of exams.
        shape: ``(slices, H, W)`` of each exam.
        seed: seed of the local generator; the same seed writes the same data.
        exams_per_patient: exams sharing one patient id (e.g. follow-up scans).

    Returns:
        ``{"root": str, "labels_csv": str, "labels": {exam: label}, "patients": {exam: patient}}``.

    Raises:
        ValueError: bad ``n`` or ``exams_per_patient``.
    """
    import nibabel as nib

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if exams_per_patient < 1:
        raise ValueError(f"exams_per_patient must be >= 1, got {exams_per_patient}.")
    g = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "exams").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    labels, patients = {}, {}
    for i, cond in enumerate(_balanced_conditions(n, g)):
        exam = f"knee_{i:03d}"
        ph = synthetic_knee(shape, int(cond), rng=g)
        # voxel axes (i, j, k) = (col, row, slice), see KNEE_DEMO_AFFINE
        img = nib.Nifti1Image(ph["volume"].transpose(2, 1, 0), KNEE_DEMO_AFFINE)
        msk = nib.Nifti1Image(ph["mask"].transpose(2, 1, 0), KNEE_DEMO_AFFINE)
        for im in (img, msk):
            im.set_qform(KNEE_DEMO_AFFINE, code=1)
            im.set_sform(KNEE_DEMO_AFFINE, code=1)
            im.header.set_xyzt_units("mm")
        nib.save(img, str(root / "exams" / f"{exam}.nii.gz"))
        nib.save(msk, str(root / "masks" / f"{exam}.nii.gz"))
        labels[exam] = int(cond)
        patients[exam] = f"patient_{i // exams_per_patient:03d}"
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["exam", "label"] + (["patient"] if exams_per_patient > 1 else []))
        for exam, label in labels.items():
            w.writerow([exam, label] + ([patients[exam]] if exams_per_patient > 1 else []))
    logger.info("wrote %d synthetic knee NIfTI exams to %s", n, root)
    return {"root": str(root), "labels_csv": str(csv_path), "labels": labels, "patients": patients}
