"""The loaders give exactly the pixels, shapes, dtypes and meta they gave before they became MONAI ImageReaders.

``tests/io/loader_reference.json`` holds, for every input below, what ``LoadImage2d`` and ``LoadKneeVolume``
returned at commit cabfff5, before they were rebuilt on ``monai.transforms.LoadImage``: the shape, the dtype, a
SHA-256 of the pixels and the meta dict, or the error type and message. It was written once by running this module
on that commit (``python tests/io/test_loader_reference.py --write``); the tests compare the current code against
it, through medplugin's transforms and through MONAI's ``LoadImage(reader=...)`` / ``LoadImaged`` with the readers
of :mod:`medplugin.io` (errors included: a bad file raises the same ``BadInputError`` there too). Do not
rewrite the file with the code under test: check out cabfff5 to regenerate it (e.g. for a new decoder release).

Inputs: the real JPEGs in ``tests/data/real``, every ``.dcm`` file of pydicom and of pydicom-data, nibabel's test
NIfTI files, a few synthetic 2D images (16-bit and RGBA PNG, palette GIF, BMP, TIFF, 2D NIfTI), the synthetic
knee DICOM series of ``tests/bundles/_contract.py``, the synthetic knee NIfTI exams and MRNet ``.npy`` volumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).resolve().with_name("loader_reference.json")
CHANNELS = {"ch1": 1, "ch3": 3, "chNone": None}
KNEE_VARIANTS = {
    "default": {},
    "no_channel": {"channel_first": False},
    "file_order": {"order": "file", "npy_spacing": (3.0, 0.5, 0.5)},
}


# --------------------------------------------------------------------------------------------- inputs
def _dicom_roots() -> dict[str, Path]:
    import pydicom

    roots = {"pydicom": Path(pydicom.__file__).parent / "data" / "test_files"}
    try:
        from pydicom.data.data_manager import external_data_sources

        for name, source in external_data_sources().items():
            roots[name] = Path(source.data_path)
    except Exception:  # noqa: BLE001 - pydicom-data not installed: its files are skipped (reported below)
        pass
    return roots


def _nibabel_files() -> dict[str, Path]:
    import nibabel

    data = Path(nibabel.__file__).parent / "tests" / "data"
    return {f"nibabel/{p.name}": p for p in sorted(data.glob("*.nii*"))}


def _synthetic_2d(folder: Path) -> dict[str, Path]:
    import nibabel as nib
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out = {}
    gray16 = (rng.integers(0, 65536, (30, 44))).astype(np.uint16)
    Image.fromarray(gray16).save(out.setdefault("synthetic/gray16.png", folder / "gray16.png"))
    rgba = rng.integers(0, 256, (24, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(out.setdefault("synthetic/rgba.png", folder / "rgba.png"))
    rgb = rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(out.setdefault("synthetic/rgb.bmp", folder / "rgb.bmp"))
    Image.fromarray(rgb, "RGB").convert("P").save(out.setdefault("synthetic/palette.gif", folder / "palette.gif"))
    gray = rng.integers(0, 256, (33, 17), dtype=np.uint8)
    Image.fromarray(gray).save(out.setdefault("synthetic/gray.tif", folder / "gray.tif"))
    Image.fromarray(gray).save(out.setdefault("synthetic/gray.png", folder / "gray.png"))
    img = nib.Nifti1Image(rng.normal(50, 9, (40, 28, 1)).astype(np.float32), np.diag([0.7, 0.4, 1.0, 1.0]))
    nib.save(img, out.setdefault("synthetic/xray2d.nii.gz", folder / "xray2d.nii.gz"))
    (folder / "empty.png").write_bytes(b"")
    out["synthetic/empty.png"] = folder / "empty.png"
    out["synthetic/missing.jpeg"] = folder / "missing.jpeg"
    return out


def inputs_2d(folder: Path) -> dict[str, Path]:
    """Every 2D input, by a machine-independent id."""
    out = {f"real/{p.name}": p for p in sorted((REPO / "tests" / "data" / "real").glob("*.jpeg"))}
    for name, root in _dicom_roots().items():
        out.update({f"{name}/{p.relative_to(root).as_posix()}": p for p in sorted(root.rglob("*.dcm"))})
    out.update(_nibabel_files())
    out.update(_synthetic_2d(folder))
    return out


def _synthetic_3d(folder: Path) -> dict[str, Path]:
    import nibabel as nib

    from medplugin.data.synthetic.knee import make_knee_nifti_demo
    from tests.bundles._contract import write_dicom_series

    folder.mkdir(parents=True, exist_ok=True)
    out = {"synthetic/dicom_series": write_dicom_series(folder / "dicom_series")}
    make_knee_nifti_demo(folder / "knee", n=2, shape=(6, 20, 16), seed=3)
    out.update({f"synthetic/knee/{p.name}": p for p in sorted((folder / "knee" / "exams").glob("*.nii.gz"))})
    out["synthetic/knee_mask.nii.gz"] = sorted((folder / "knee" / "masks").glob("*.nii.gz"))[0]
    rng = np.random.default_rng(11)
    axial = nib.Nifti1Image(rng.normal(300, 40, (14, 12, 5, 1)).astype(np.float32),
                            np.array([[0.8, 0, 0, -5], [0, 0.9, 0, 3], [0, 0, 4.0, 20], [0, 0, 0, 1]]))
    nib.save(axial, out.setdefault("synthetic/axial_4d.nii", folder / "axial_4d.nii"))
    oblique = np.array([[0, 0.1, 2.9, 1], [0.5, 0, 0.2, 2], [0.05, -0.6, 0, 3], [0, 0, 0, 1]])
    scaled = nib.Nifti1Image(rng.integers(0, 900, (9, 11, 7)).astype(np.int16), oblique)
    scaled.header.set_slope_inter(0.37, -12.5)
    nib.save(scaled, out.setdefault("synthetic/oblique_scaled.nii.gz", folder / "oblique_scaled.nii.gz"))
    np.save(out.setdefault("synthetic/mrnet_uint8.npy", folder / "0000.npy"),
            rng.integers(0, 256, (7, 16, 16), dtype=np.uint8))
    np.save(out.setdefault("synthetic/mrnet_float.npy", folder / "0001.npy"),
            rng.normal(0, 1, (5, 12, 10)).astype(np.float64))
    np.save(out.setdefault("synthetic/mrnet_int16.npy", folder / "0002.npy"),
            rng.integers(0, 256, (5, 8, 8)).astype(np.int16))
    np.save(out.setdefault("synthetic/mrnet_2d.npy", folder / "0003.npy"),
            rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (folder / "empty_dir").mkdir(exist_ok=True)
    out["synthetic/empty_dir"] = folder / "empty_dir"
    return out


def inputs_3d(folder: Path) -> dict[str, Path]:
    """Every knee-volume input, by a machine-independent id."""
    return {**_nibabel_files(), **_synthetic_3d(folder)}


# --------------------------------------------------------------------------------------------- description
def _numbers(value):
    """The elements of an array (its dtype is recorded beside them): numbers as JSON numbers, NaN as "nan"."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def _canon(value, path: str):
    """A JSON value that tells ``value`` and its type apart (a tensor from an array, a tuple from a list)."""
    if isinstance(value, torch.Tensor):
        return {"torch": str(value.dtype), "shape": list(value.shape), "value": _numbers(value.tolist())}
    if isinstance(value, np.ndarray):
        return {"numpy": str(value.dtype), "shape": list(value.shape), "value": _numbers(value.tolist())}
    if isinstance(value, (list, tuple)):
        items = [_canon(v, path) for v in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, float):
        return {"float": "nan" if math.isnan(value) else repr(value)}
    if isinstance(value, str):
        return value.replace(path, "<path>") if type(value) is str else {type(value).__name__: str(value)}
    if value is None or isinstance(value, (bool, int)):
        return value if type(value) in (bool, int, type(None)) else {type(value).__name__: repr(value)}
    return {type(value).__name__: str(value)}


def describe(load, path) -> dict:
    """What ``load(path)`` gives: shape, dtype, pixel digest and meta of the MetaTensor, or the error."""
    spath = str(path)
    try:
        out = load(path)
    except Exception as e:  # noqa: BLE001 - the error is part of the behaviour compared
        return {"error": type(e).__name__, "message": str(e).replace(spath, "<path>")}
    arr = np.ascontiguousarray(out.detach().cpu().numpy())
    return {
        "type": type(out).__name__,
        "shape": list(arr.shape),
        "dtype": str(out.dtype),
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        "meta": {str(k): _canon(v, spath) for k, v in out.meta.items()},
    }


def compute_2d(files: dict[str, Path], loader_factory) -> dict:
    return {f"{key}/{c}": describe(loader_factory(ch), path)
            for key, path in files.items() for c, ch in CHANNELS.items()}


def compute_3d(files: dict[str, Path], loader_factory) -> dict:
    return {f"{key}/{v}": describe(loader_factory(**kw), path)
            for key, path in files.items() for v, kw in KNEE_VARIANTS.items()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("pydicom", "pydicom-data", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pillow",
                 "nibabel", "itk", "numpy", "monai", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# --------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def files_2d(tmp_path_factory) -> dict[str, Path]:
    return inputs_2d(tmp_path_factory.mktemp("loader_inputs_2d"))


@pytest.fixture(scope="module")
def files_3d(tmp_path_factory) -> dict[str, Path]:
    return inputs_3d(tmp_path_factory.mktemp("loader_inputs_3d"))


# 2D meta keys that MONAI's readers set and the loaders did not set before
NEW_2D_KEYS = {"spatial_shape", "original_affine", "original_channel_dim"}


def _compare(case: str, got: dict, want: dict, new_keys: set, versions: dict) -> None:
    where = f"{case} (reference from {versions})"
    assert ("error" in got) == ("error" in want), f"{where}: now {got.get('error') or 'read'}, was {want}"
    if "error" in want:
        assert got == want, where
        return
    for k in ("type", "shape", "dtype", "sha256"):
        assert got[k] == want[k], f"{where}: {k} {got[k]!r} != {want[k]!r}"
    for k, v in want["meta"].items():
        assert got["meta"].get(k) == v, f"{where}: meta[{k!r}] {got['meta'].get(k)!r} != {v!r}"
    assert set(got["meta"]) - set(want["meta"]) <= new_keys, f"{where}: unexpected meta keys"


# Deliberately changed since the reference: a DICOM file of several frames is no longer read as its first frame but
# refused with the frame count (a 2-D model must not score frame 1 as if it were the whole input). For a case the
# reference read, the loaders must now give that refusal, and frame 1, read on request, the reference's pixels.
def _frame_count(path: Path) -> int:
    import pydicom

    if Path(path).suffix.lower() != ".dcm" or not Path(path).is_file():
        return 1
    try:
        return int(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable header: the reader's own error is compared
        return 1


def _compare_2d(case: str, got: dict, want: dict, path: Path, channels: int | None, versions: dict) -> None:
    frames = _frame_count(path)
    if frames == 1 or "error" in want:
        _compare(case, got, want, NEW_2D_KEYS, versions)
        return
    from medplugin.io import read_dicom_image
    from medplugin.io.image2d import _to_channels

    assert got.get("error") == "BadInputError", f"{case}: a {frames}-frame file was read: {got}"
    assert got["message"].startswith(f"<path>: a multi-frame image of {frames} frames ("), got["message"]
    assert "export the" in got["message"] and "as single-frame images (one file each)" in got["message"]
    image, _ = read_dicom_image(path, frame=1)
    arr = np.ascontiguousarray(_to_channels(np.asarray(image, np.float32), channels, str(path)))
    assert list(arr.shape) == want["shape"] and hashlib.sha256(arr.tobytes()).hexdigest() == want["sha256"], case


def _check_new_2d_keys(got: dict) -> None:
    if "error" in got or not NEW_2D_KEYS <= set(got["meta"]):
        return
    h, w = got["shape"][1:]
    assert got["meta"]["spatial_shape"]["value"] == [h, w]
    assert got["meta"]["original_channel_dim"] == 0
    assert got["meta"]["original_affine"]["value"] == got["meta"]["affine"]["value"]


def test_reference_covers_every_input(reference, files_2d, files_3d):
    ids_2d = {f"{k}/{c}" for k in files_2d for c in CHANNELS}
    ids_3d = {f"{k}/{v}" for k in files_3d for v in KNEE_VARIANTS}
    assert ids_2d == set(reference["2d"]), "the 2D inputs differ from the reference's (pydicom-data missing?)"
    assert ids_3d == set(reference["3d"])
    assert len(ids_2d) >= 3 * 150 and len(ids_3d) >= 3 * 17
    read = [k for k, v in reference["2d"].items() if "error" not in v]
    assert len(read) >= 3 * 110  # most of them are images that load


def test_2d_loader_matches_reference(reference, files_2d):
    from medplugin.transforms import LoadImage2d

    got = compute_2d(files_2d, lambda ch: LoadImage2d(channels=ch))
    for case, want in reference["2d"].items():
        key, c = case.rsplit("/", 1)
        _compare_2d(case, got[case], want, files_2d[key], CHANNELS[c], reference["versions"])
        _check_new_2d_keys(got[case])


def test_knee_loader_matches_reference(reference, files_3d):
    from medplugin.transforms import LoadKneeVolume

    got = compute_3d(files_3d, lambda **kw: LoadKneeVolume(**kw))
    for case, want in reference["3d"].items():
        _compare(case, got[case], want, set(), reference["versions"])


def test_dictionary_loaders_match_reference(reference, files_2d, files_3d):
    from medplugin.transforms import LoadImage2dd, LoadKneeVolumed

    for key, path in files_2d.items():
        if not key.startswith(("real/", "synthetic/", "pydicom/CT", "pydicom/MR", "pydicom/SC", "pydicom/RG")):
            continue
        for c, ch in CHANNELS.items():
            want = reference["2d"][f"{key}/{c}"]
            if "error" in want:
                continue
            loader = LoadImage2dd("img", channels=ch, path_key="path")
            out = describe(lambda p, loader=loader: loader({"img": p})["img"], path)
            _compare_2d(f"{key}/{c} (dict)", out, want, path, ch, reference["versions"])
            if "error" not in out:
                assert loader({"img": path})["path"] == str(path)
    for key, path in files_3d.items():
        want = reference["3d"][f"{key}/default"]
        if "error" in want:
            continue
        loader = LoadKneeVolumed("image", path_key="path")
        got = describe(lambda p, loader=loader: loader({"image": p})["image"], path)
        _compare(f"{key}/default (dict)", got, want, set(),
                 reference["versions"])


# a sample of each kind (JPEG, 16-bit PNG, RGBA, 2D NIfTI, CT, RLE MR, RGB and YBR JPEG DICOM, VOI LUT, CR
# radiographs MONOCHROME1 with a window, JPEG 2000) and errors, through MONAI's own LoadImage(d)
MONAI_SAMPLE_2D = {"NORMAL2-IM-1438-0001.jpeg", "gray16.png", "rgba.png", "xray2d.nii.gz", "empty.png", "missing.jpeg",
                   "CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "vlut_04.dcm",
                   "RG3_UNCR.dcm", "RG3_J2KR.dcm", "rtdose.dcm"}


def test_monai_load_image_with_the_readers_matches_reference(reference, files_2d, files_3d):
    from monai.transforms import LoadImage, LoadImaged

    from medplugin.io import Image2dReader, KneeVolumeReader

    sample = {k: p for k, p in files_2d.items() if Path(k).name in MONAI_SAMPLE_2D}
    assert len(sample) == len(MONAI_SAMPLE_2D)
    for key, path in sample.items():
        for c, ch in CHANNELS.items():
            got = describe(LoadImage(reader=Image2dReader(channels=ch)), path)
            _compare(f"{key}/{c} (LoadImage)", got, reference["2d"][f"{key}/{c}"], NEW_2D_KEYS, reference["versions"])
        loader = LoadImaged("image", reader=Image2dReader())
        got = describe(lambda p, loader=loader: loader({"image": p})["image"], path)
        _compare(f"{key}/ch1 (LoadImaged)", got, reference["2d"][f"{key}/ch1"], NEW_2D_KEYS, reference["versions"])
    for key, path in files_3d.items():
        for v, kw in KNEE_VARIANTS.items():
            got = describe(LoadImage(reader=KneeVolumeReader(**kw)), path)
            _compare(f"{key}/{v} (LoadImage)", got, reference["3d"][f"{key}/{v}"], set(), reference["versions"])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import subprocess
    import tempfile

    sys.path.insert(0, str(REPO))
    from medplugin.transforms import LoadImage2d, LoadKneeVolume

    with tempfile.TemporaryDirectory(prefix="loader_reference_") as tmp:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        ref = {
            "commit": commit.stdout.strip(),
            "versions": _versions(),
            "2d": compute_2d(inputs_2d(Path(tmp) / "2d"), lambda ch: LoadImage2d(channels=ch)),
            "3d": compute_3d(inputs_3d(Path(tmp) / "3d"), lambda **kw: LoadKneeVolume(**kw)),
        }
    lines = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in ref.items() if k not in ("2d", "3d")]
    for part in ("2d", "3d"):  # one case per line
        cases = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(ref[part].items()))
        lines.append(f"{json.dumps(part)}: {{\n{cases}\n}}")
    REFERENCE.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {REFERENCE}: {len(ref['2d'])} 2D and {len(ref['3d'])} 3D cases")
