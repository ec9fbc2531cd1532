"""Fuzzing the readers and datalist builders with mutated bytes of real files.

Every reader documents one error for bad input, :class:`medplugin.errors.BadInputError` naming the file. Here
hypothesis truncates, overwrites, inserts and deletes bytes of real JPEG, PNG, DICOM (pydicom's test files),
NumPy ``.npy``, NIfTI, the label CSVs of every layout (MRNet, ChestX-ray14, EyePACS, APTOS, clinical knee),
MONAI Label's per-study label files and datalist JSON files: a reader either returns a sane result or raises
``BadInputError``; any other exception, or an example running past its deadline (a hang), fails the test.
Bounded and deterministic (``derandomize=True``) so CI is fast and repeatable.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medplugin.data.chestxray14 import FINDINGS, index_chestxray14
from medplugin.data.datalist import index_images, read_datalist
from medplugin.data.knee import index_mrnet
from medplugin.errors import BadInputError
from medplugin.io.dicom import read_dicom_image
from medplugin.io.image2d import read_image_2d
from medplugin.io.mrnet import read_knee_volume, read_mrnet_volume

REPO = Path(__file__).resolve().parents[2]
KERMANY = Path("/work/shared/data/cxr-pediatric-kermany")
REAL = REPO / "tests" / "data" / "real"

# MEDPLUGIN_FUZZ_SCALE=20 (for example) runs 20 times more, random examples: a longer local bug hunt
_SCALE = int(os.environ.get("MEDPLUGIN_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60 * _SCALE, deadline=30000, derandomize=_SCALE == 1, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Deadlines are generous because CI machines are shared and slow: an example takes milliseconds; one still
# running after HANG_S is a hang (interrupted by an alarm), one past the deadline a near-hang.
HANG_S = 60


@contextmanager
def _no_hang(seconds: int = HANG_S):
    def _alarm(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with 1-4 mutations: truncation, byte overwrites, insertions, deletions, or the empty file."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "overwrite", "insert", "delete", "empty"]))
        n = len(data)
        if kind == "empty" or n == 0:
            if draw(st.integers(0, 9)) == 0:
                data = bytearray()
            continue
        pos = draw(st.integers(0, n - 1))
        if kind == "truncate":
            data = data[:pos]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.fixture(scope="module")
def work() -> Path:
    d = Path(tempfile.mkdtemp(prefix="fuzz_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _real_jpeg() -> Path:
    found = sorted(KERMANY.glob("*.jpeg")) if KERMANY.is_dir() else []
    return found[0] if found else sorted(REAL.glob("*.jpeg"))[0]


def _small(fmt: str) -> bytes:
    """A real chest X-ray re-encoded at 48x40 (small, so that each example decodes in milliseconds)."""
    from PIL import Image

    with Image.open(_real_jpeg()) as im:
        small = im.convert("L").resize((48, 40))
    buf = io.BytesIO()
    small.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _check_image(arr: np.ndarray) -> None:
    assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[0] == 1 and min(arr.shape) >= 1
    assert np.isfinite(arr).all()


def _read_image(path: Path) -> None:
    with _no_hang():
        try:
            arr, meta = read_image_2d(path, channels=1)
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    _check_image(arr)


SEEDS_2D = {"jpeg": _small("JPEG"), "png": _small("PNG")}


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_2d_images(fmt, data, work):
    path = work / f"img.{fmt}"
    path.write_bytes(data.draw(mutated(SEEDS_2D[fmt])))
    _read_image(path)


@settings(FUZZ, max_examples=15 * _SCALE)
@given(data=st.data())
def test_full_size_real_jpeg(data, work):
    seed = _real_jpeg().read_bytes()
    path = work / "full.jpeg"
    path.write_bytes(data.draw(mutated(seed)))
    _read_image(path)


def _dicom_seeds() -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    # grayscale CT and MR, RLE-compressed MR, an odd-sized RGB, and an RT plan (no pixel data)
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_small_odd.dcm", "rtplan.dcm"]
    return {n: Path(get_testdata_file(n)).read_bytes() for n in names}


DICOM_SEEDS = _dicom_seeds()
read_dicom_image(__import__("pydicom.data").data.get_testdata_file("MR_small_RLE.dcm"))  # warm lazy imports


@settings(FUZZ, max_examples=40 * _SCALE)
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(DICOM_SEEDS))
def test_dicom(name, data, work):
    path = work / name
    path.write_bytes(data.draw(mutated(DICOM_SEEDS[name])))
    with _no_hang():
        try:
            arr, meta = read_dicom_image(path)
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    assert arr.dtype == np.float32 and arr.ndim in (2, 3) and np.isfinite(arr).all()
    assert arr.min() >= 0 and arr.max() <= 255
    _read_image(path)  # and through the 2D loader


def _npy_seed() -> bytes:
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, size=(6, 16, 16), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, vol, allow_pickle=False)
    return buf.getvalue()


NPY_SEED = _npy_seed()


@FUZZ
@given(data=st.data())
def test_mrnet_npy(data, work):
    path = work / "0000.npy"
    path.write_bytes(data.draw(mutated(NPY_SEED)))
    with _no_hang():
        try:
            vol = read_mrnet_volume(path)
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    assert vol.dtype == np.uint8 and vol.ndim == 3 and min(vol.shape) >= 1 and vol.min() < vol.max()


def _nifti_seed(shape=(12, 10, 6)) -> bytes:
    import nibabel as nib

    rng = np.random.default_rng(1)
    img = nib.Nifti1Image(rng.normal(100, 20, size=shape).astype(np.float32), np.diag([0.5, 0.5, 3.0, 1.0]))
    return img.to_bytes()


NIFTI_SEED = _nifti_seed()


@settings(FUZZ, max_examples=40 * _SCALE)
@given(data=st.data())
def test_nifti_volume(data, work):
    path = work / "exam.nii"
    path.write_bytes(data.draw(mutated(NIFTI_SEED)))
    with _no_hang():
        try:
            vol, affine = read_knee_volume(path)
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    assert vol.ndim == 3 and np.isfinite(vol).all() and vol.min() < vol.max() and affine.shape == (4, 4)


@settings(FUZZ, max_examples=30 * _SCALE)
@given(data=st.data())
def test_nifti_2d_image(data, work):
    path = work / "image.nii"
    path.write_bytes(data.draw(mutated(_nifti_seed((40, 48, 1)))))
    _read_image(path)


@pytest.fixture(scope="module")
def monai_loaders():
    """MONAI's own LoadImage with medplugin's readers (built once: MONAI's constructor builds all its readers)."""
    from monai.transforms import LoadImage

    from medplugin.io import Image2dReader, KneeVolumeReader

    return {"2d": LoadImage(reader=Image2dReader()), "3d": LoadImage(reader=KneeVolumeReader())}


MONAI_SEEDS = {  # name, seed bytes, loader
    "jpeg": ("img.jpeg", SEEDS_2D["jpeg"], "2d"),
    "png": ("img.png", SEEDS_2D["png"], "2d"),
    "dicom": ("img.dcm", DICOM_SEEDS["CT_small.dcm"], "2d"),
    "npy": ("0000.npy", NPY_SEED, "3d"),
    "nifti": ("exam.nii", NIFTI_SEED, "3d"),
}


@settings(FUZZ, max_examples=20 * _SCALE)
@given(data=st.data())
@pytest.mark.parametrize("kind", sorted(MONAI_SEEDS))
def test_monai_load_image_with_the_readers(kind, data, work, monai_loaders):
    """Through ``monai.transforms.LoadImage(reader=...)`` a damaged file also ends in BadInputError naming it."""
    import torch
    from monai.data import MetaTensor

    name, seed, loader = MONAI_SEEDS[kind]
    path = work / f"monai_{name}"
    path.write_bytes(data.draw(mutated(seed)))
    with _no_hang():
        try:
            img = monai_loaders[loader](path)
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    assert isinstance(img, MetaTensor) and img.meta["filename_or_obj"] == str(path)
    assert img.ndim == (3 if loader == "2d" else 4) and torch.isfinite(img).all()


# ---- label CSVs and datalists -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mrnet_root(work) -> Path:
    from medplugin.data.synthetic.knee import make_mrnet_demo

    root = work / "mrnet"
    make_mrnet_demo(root, n_train=6, n_valid=3, slices=(4, 5), size=16, seed=0)
    return root


def _text_mutations(seed: bytes):
    """Byte mutations plus text-level ones: a row's field replaced by an unknown value, a column dropped."""
    lines = seed.decode().splitlines()
    byte_level = mutated(seed)

    @st.composite
    def _text(draw):
        rows = [ln.split(",") for ln in lines]
        i = draw(st.integers(0, len(rows) - 1))
        j = draw(st.integers(0, max(len(rows[i]) - 1, 0)))
        how = draw(st.sampled_from(["value", "drop", "blank"]))
        if how == "value":
            rows[i][j] = draw(st.sampled_from(["2", "-1", "x", "", "NaN", "Pneumonia|Bogus", "1.5", "\x00", "é"]))
        elif how == "drop":
            del rows[i][j]
        else:
            rows[i] = [""] * len(rows[i])
        return ("\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")

    return st.one_of(byte_level, _text())


@settings(FUZZ, max_examples=80 * _SCALE)
@given(data=st.data())
def test_mrnet_label_csv(data, mrnet_root):
    csv_path = mrnet_root / "train-acl.csv"
    original = csv_path.read_bytes()
    try:
        csv_path.write_bytes(data.draw(_text_mutations(original)))
        with _no_hang():
            try:
                dl = index_mrnet(mrnet_root, task="acl", val_fraction=0.3)
            except BadInputError as e:
                assert e.reason and Path(e.path).name in {"train-acl.csv", "mrnet"} | {csv_path.name}
                return
        for part in dl.values():
            for entry in part:
                assert entry["label"] in (0, 1) and Path(entry["image"]).is_file()
    finally:
        csv_path.write_bytes(original)


@pytest.fixture(scope="module")
def chest_root(work) -> Path:
    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo

    root = work / "chest"
    make_chestxray14_demo(root, n_patients=6, size=32, seed=0)
    return root


@settings(FUZZ, max_examples=60 * _SCALE)
@given(data=st.data(), skip=st.booleans())
def test_chestxray14_label_csv(data, skip, chest_root):
    csv_path = chest_root / "Data_Entry_2017.csv"
    original = csv_path.read_bytes()
    try:
        csv_path.write_bytes(data.draw(_text_mutations(original)))
        with _no_hang():
            try:
                dl = index_chestxray14(chest_root, on_bad_input="skip" if skip else "fail", val_fraction=0.2)
            except BadInputError as e:
                assert e.reason
                return
        for part in dl.values():
            for entry in part:
                assert len(entry["label"]) == len(FINDINGS) and set(entry["label"]) <= {0.0, 1.0}
                assert Path(entry["image"]).is_file()
    finally:
        csv_path.write_bytes(original)


@pytest.fixture(scope="module")
def datalist_file(work) -> Path:
    folder = work / "dl"
    folder.mkdir()
    for i in range(3):
        (folder / f"im{i}.png").write_bytes(SEEDS_2D["png"])
    dl = {s: [{"image": f"im{i}.png", "label": i % 2, "patient_id": str(i)}] for i, s in
          enumerate(("training", "validation", "test"))}
    path = folder / "datalist.json"
    path.write_text(json.dumps(dl, indent=1))
    return path


@settings(FUZZ, max_examples=80 * _SCALE)
@given(data=st.data())
def test_datalist_json(data, datalist_file, work):
    mutant = work / "dl" / "mutant.json"
    mutant.write_bytes(data.draw(mutated(datalist_file.read_bytes())))
    with _no_hang():
        try:
            dl = read_datalist(mutant, required_keys=("image", "label"), sections=("training", "validation", "test"))
            for part in dl.values():
                for entry in part:
                    assert Path(entry["image"]).exists()
        except BadInputError as e:
            assert e.path == str(mutant) and e.reason
        try:
            entries = index_images(None, mutant)
            assert all(set(e) >= {"image", "path", "name"} for e in entries)
        except BadInputError as e:
            assert e.path == str(mutant) and e.reason


def _index_mutated_csv(csv_path: Path, mutant: bytes, index, check) -> None:
    """Index with ``csv_path`` replaced by ``mutant``.

    The result is a ``BadInputError`` with a reason, or entries ``check`` accepts.
    """
    original = csv_path.read_bytes()
    try:
        csv_path.write_bytes(mutant)
        with _no_hang():
            try:
                dl = index()
            except BadInputError as e:
                assert e.reason
                return
        patients = [{e["patient_id"] for e in part} for part in dl.values()]
        for i, a in enumerate(patients):  # a patient (both eyes, every exam) never lands in two splits
            assert all(not (a & b) for b in patients[i + 1:])
        for part in dl.values():
            for entry in part:
                assert Path(entry["image"]).exists()
                check(entry)
    finally:
        csv_path.write_bytes(original)


@pytest.fixture(scope="module")
def fundus_roots(work) -> dict[str, Path]:
    """A tiny EyePACS release (demo) and an APTOS 2019 one made of the same photographs."""
    import csv as _csv

    from PIL import Image

    from medplugin.data.synthetic.fundus import make_eyepacs_demo

    eyepacs = work / "eyepacs"
    make_eyepacs_demo(eyepacs, n_patients=6, size=48, seed=0)
    aptos = work / "aptos"
    (aptos / "train_images").mkdir(parents=True)
    rows = list(_csv.DictReader((eyepacs / "trainLabels.csv").open()))
    with (aptos / "train.csv").open("w") as f:
        f.write("id_code,diagnosis\n")
        for i, r in enumerate(rows):
            code = f"{i:04x}a1b2c3"
            with Image.open(eyepacs / "train" / f"{r['image']}.jpeg") as im:
                im.save(aptos / "train_images" / f"{code}.png")
            f.write(f"{code},{r['level']}\n")
    return {"eyepacs": eyepacs, "aptos": aptos}


@settings(FUZZ, max_examples=60 * _SCALE)
@given(data=st.data(), layout=st.sampled_from(["eyepacs", "aptos"]), skip=st.booleans(),
       task=st.sampled_from(["grade", "referable"]))
def test_fundus_label_csv(data, layout, skip, task, fundus_roots):
    from medplugin.data.fundus import index_aptos, index_eyepacs

    root = fundus_roots[layout]
    csv_path = root / ("trainLabels.csv" if layout == "eyepacs" else "train.csv")
    index = index_eyepacs if layout == "eyepacs" else index_aptos
    n_classes = 5 if task == "grade" else 2
    _index_mutated_csv(csv_path, data.draw(_text_mutations(csv_path.read_bytes())),
                       lambda: index(root, task=task, val_fraction=0.2, test_fraction=0.2,
                                     on_bad_input="skip" if skip else "fail"),
                       lambda e: isinstance(e["label"], int) and 0 <= e["label"] < n_classes)


@pytest.fixture(scope="module")
def knee_root(work) -> Path:
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    return Path(make_knee_nifti_demo(work / "knee_clinical", n=8, shape=(4, 16, 16), seed=0)["root"])


@settings(FUZZ, max_examples=60 * _SCALE)
@given(data=st.data(), skip=st.booleans(), mode=st.sampled_from(["four", "binary"]))
def test_knee_clinical_label_csv(data, skip, mode, knee_root):
    from medplugin.data.knee import index_knee

    csv_path = knee_root / "labels.csv"
    n_classes = 4 if mode == "four" else 2
    _index_mutated_csv(csv_path, data.draw(_text_mutations(csv_path.read_bytes())),
                       lambda: index_knee(knee_root, label_mode=mode, val_fraction=0.25, test_fraction=0.25,
                                          on_bad_input="skip" if skip else "fail"),
                       lambda e: isinstance(e["label"], int) and 0 <= e["label"] < n_classes)


@settings(FUZZ, max_examples=80 * _SCALE)
@given(data=st.data(), kind=st.sampled_from(["class.txt", "class.json", "findings.txt", "findings.json"]))
def test_monai_label_label_files(data, kind, work):
    """MONAI Label's per-study label files, as the classification bundles' training overlays read them."""
    from medplugin.transforms import ClassIndexFromFile, MultiHotFromFile

    seeds = {"class.txt": b"partial_rupture\n", "class.json": b'{"label": "DRUSEN"}',
             "findings.txt": b"Effusion|Mass\n", "findings.json": b'{"label": ["Effusion", "Pneumothorax"]}'}
    path = work / f"label_{kind}"
    path.write_bytes(data.draw(mutated(seeds[kind])))
    if kind.startswith("class"):
        t = ClassIndexFromFile(["CNV", "DME", "DRUSEN", "NORMAL", "healthy", "minor_strain", "partial_rupture"])
    else:
        t = MultiHotFromFile(FINDINGS)
    with _no_hang():
        try:
            out = t(str(path))
        except BadInputError as e:
            assert e.path == str(path) and e.reason
            return
    if kind.startswith("class"):
        assert isinstance(out, int) and 0 <= out < 7
    else:
        assert out.shape == (len(FINDINGS),) and set(out.tolist()) <= {0.0, 1.0}
