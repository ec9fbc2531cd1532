"""Readers of MRNet .npy exams and of knee NIfTI files / DICOM series."""

from __future__ import annotations

import gzip
import pickle

import nibabel as nib
import numpy as np
import pytest

from medplugin.errors import BadInputError
from medplugin.io.mrnet import read_knee_volume, read_mrnet_volume


def _volume(shape=(20, 32, 32), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- MRNet .npy


def test_read_mrnet_volume_round_trip(tmp_path):
    vol = _volume()
    np.save(tmp_path / "0000.npy", vol)
    out = read_mrnet_volume(tmp_path / "0000.npy")
    assert out.dtype == np.uint8 and out.shape == (20, 32, 32)
    np.testing.assert_array_equal(out, vol)


def test_read_mrnet_volume_float_only_when_allowed(tmp_path):
    np.save(tmp_path / "f.npy", _volume().astype(np.float64) / 255)
    with pytest.raises(BadInputError, match=r"f\.npy: dtype float64, expected uint8 .*allow_float=True"):
        read_mrnet_volume(tmp_path / "f.npy")
    out = read_mrnet_volume(tmp_path / "f.npy", allow_float=True)
    assert out.dtype == np.float32 and out.shape == (20, 32, 32)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, r"missing\.npy: MRNet volume file not found"),
        (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b"\x00\x01garbage" * 10), "not a NumPy .npy file .*corrupt"),
        (lambda p: p.write_bytes(pickle.dumps(np.zeros((3, 4, 4)))), "not a NumPy .npy file"),
        (lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object)), "refused to load: .*pickled Python objects"),
        (lambda p: np.save(p, _volume().astype(np.int16)), "dtype int16, expected uint8"),
        (lambda p: np.save(p, np.array(["a", "b"])), "dtype <U1 is not numeric"),
        (lambda p: np.save(p, _volume((32, 32))), r"2 dimension\(s\) with shape \(32, 32\); expected \(slices, H, W\)"),
        (lambda p: np.save(p, _volume((2, 5, 32, 32))), r"4 dimension\(s\)"),
        (lambda p: np.save(p, np.zeros((0, 32, 32), np.uint8)), "empty axis"),
        (lambda p: np.save(p, np.full((20, 32, 32), 7, np.uint8)), r"volume is constant \(every voxel is 7\)"),
    ],
    ids=["missing", "empty", "garbage", "pickle", "object", "int16", "str", "2d", "4d", "no-slices", "constant"],
)
def test_read_mrnet_volume_bad_files(tmp_path, make, match):
    path = tmp_path / "missing.npy"
    make(path)
    with pytest.raises(BadInputError, match=match):
        read_mrnet_volume(path)


def test_read_mrnet_volume_truncated_and_npz_and_nan(tmp_path):
    np.save(tmp_path / "full.npy", _volume())
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"cut\.npy: corrupt or truncated \.npy file"):
        read_mrnet_volume(tmp_path / "cut.npy")
    np.savez(tmp_path / "both.npz", a=_volume())
    with pytest.raises(BadInputError, match=r"both\.npz: is an \.npz archive"):
        read_mrnet_volume(tmp_path / "both.npz")
    vol = _volume().astype(np.float32)
    vol[0, 0, :3] = np.nan
    np.save(tmp_path / "nan.npy", vol)
    with pytest.raises(BadInputError, match=r"nan\.npy: volume holds 3 NaN/inf value\(s\)"):
        read_mrnet_volume(tmp_path / "nan.npy", allow_float=True)
    with pytest.raises(BadInputError, match="3 NaN/inf"):  # the NaN is reported before the dtype
        read_mrnet_volume(tmp_path / "nan.npy")


def test_read_mrnet_volume_refuses_pickle_without_running_it(tmp_path):
    ran = []

    class Evil:
        def __reduce__(self):
            return (ran.append, ("ran",))

    np.save(tmp_path / "evil.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="evil.npy: refused to load"):
        read_mrnet_volume(tmp_path / "evil.npy")
    assert ran == []


# ---------------------------------------------------------------- NIfTI

# (i, j, k) = (col, row, slice): columns anterior 0.5 mm, rows inferior 0.5 mm, slices left-right 3 mm
SAGITTAL = np.array([[0, 0, 3.0, -10], [0.5, 0, 0, -20], [0, -0.5, 0, 30], [0, 0, 0, 1]])


def _nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_read_knee_nifti_sagittal_slice_first(tmp_path):
    vol = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32)  # (slices, rows, cols)
    path = _nifti(tmp_path / "knee.nii.gz", vol.transpose(2, 1, 0), SAGITTAL)
    out, affine = read_knee_volume(path)
    assert out.dtype == np.float32 and out.shape == (6, 20, 24)
    np.testing.assert_allclose(out, vol, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [3.0, 0.5, 0.5])  # spacing kept
    # affine maps (slice, row, col) to the same world point as the file's (col, row, slice)
    np.testing.assert_allclose(affine @ [2, 5, 7, 1], SAGITTAL @ [7, 5, 2, 1])
    file_order, _ = read_knee_volume(path, order="file")
    np.testing.assert_allclose(file_order, vol, rtol=1e-6)


def test_read_knee_nifti_axial_file_is_presented_as_sagittal(tmp_path):
    # voxel axes (i, j, k) = (R-L 1 mm, A-P 1 mm, S-I 4 mm): slices along k are axial
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    data = np.random.default_rng(2).random((10, 12, 5)).astype(np.float32)
    path = _nifti(tmp_path / "axial.nii", data, affine)
    out, new_affine = read_knee_volume(path)  # slices along i (L-R), rows along k (S-I), cols along j
    np.testing.assert_allclose(out, data.transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), [1.0, 4.0, 1.0])
    out_file, _ = read_knee_volume(path, order="file")
    assert out_file.shape == (5, 12, 10)
    with pytest.raises(ValueError, match="order must be 'sagittal' or 'file', got 'axial'"):
        read_knee_volume(path, order="axial")


def test_read_knee_nifti_4d_singleton_is_squeezed(tmp_path):
    data = np.random.default_rng(3).random((8, 8, 4, 1)).astype(np.float32)
    out, _ = read_knee_volume(_nifti(tmp_path / "x.nii.gz", data, SAGITTAL))
    assert out.shape == (4, 8, 8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "knee MRI exam not found"),
        (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
        (lambda p: p.write_bytes(gzip.compress(b"not a nifti header" * 30)), "not a readable NIfTI file"),
        (lambda p: _nifti(p, np.random.rand(8, 8).astype(np.float32), np.eye(4)), r"2 dimension\(s\)"),
        (lambda p: _nifti(p, np.random.rand(4, 4, 4, 2).astype(np.float32), np.eye(4)), r"4 dimension\(s\)"),
        (lambda p: _nifti(p, np.ones((4, 4, 4), np.float32), np.eye(4)), "volume is constant"),
        (lambda p: _nifti(p, np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), "64 NaN/inf"),
        (lambda p: _nifti(p, np.random.rand(1, 8, 8).astype(np.float32), np.eye(4)), "only 1 slice"),
    ],
    ids=["missing", "empty", "corrupt", "2d", "4d", "constant", "nan", "one-slice"],
)
def test_read_knee_nifti_bad_files(tmp_path, make, match):
    path = tmp_path / "exam.nii.gz"
    make(path)
    with pytest.raises(BadInputError, match="exam.nii.gz: .*" + match):
        read_knee_volume(path)


def test_read_knee_truncated_nifti_and_unknown_type(tmp_path):
    path = _nifti(tmp_path / "full.nii.gz", np.random.rand(16, 16, 8).astype(np.float32), SAGITTAL)
    data = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"cut\.nii\.gz: not a readable NIfTI file"):
        read_knee_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "exam.mha").write_bytes(b"x")
    with pytest.raises(BadInputError, match=r"exam\.mha: unknown file type"):
        read_knee_volume(tmp_path / "exam.mha")


# ---------------------------------------------------------------- DICOM series


def _write_dicom_series(folder, n=5, rows=12, cols=10, spacing=(0.5, 0.6), gap=3.5, series_uid=None, shuffle=True):
    """A sagittal MR series: rows run inferior (-z), columns anterior (-y in LPS); slice n at x = n * gap."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    for file_no, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientID, ds.SeriesNumber = "MR", "knee01", 1
        ds.InstanceNumber = int(k) + 1
        ds.ImageOrientationPatient = [0, -1, 0, 0, 0, -1]  # row direction: anterior; column direction: inferior
        ds.ImagePositionPatient = [float(k) * gap, 10.0, 40.0]
        ds.PixelSpacing = [spacing[0], spacing[1]]  # row spacing, column spacing
        ds.SliceThickness = gap
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) + 1000 * int(k))
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"IM{file_no:04d}.dcm", enforce_file_format=True)
    return series_uid


def test_read_knee_dicom_series_sorted_by_position_with_spacing(tmp_path):
    _write_dicom_series(tmp_path / "exam")
    out, affine = read_knee_volume(tmp_path / "exam")
    assert out.shape == (5, 12, 10)
    # slice k holds 1000 * k + row * cols + col: order by position, not by file name
    np.testing.assert_array_equal(out[:, 0, 0], [0, 1000, 2000, 3000, 4000])
    np.testing.assert_array_equal(out[2, 3, 4], 2000 + 3 * 10 + 4)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [3.5, 0.5, 0.6], rtol=1e-5)
    # RAS: slice axis runs to the left (-x in RAS for +x in LPS), rows inferior, columns anterior
    np.testing.assert_allclose(affine[:3, 0], [-3.5, 0, 0], atol=1e-5)
    np.testing.assert_allclose(affine[:3, 1], [0, 0, -0.5], atol=1e-5)
    np.testing.assert_allclose(affine[:3, 2], [0, 0.6, 0], atol=1e-5)
    np.testing.assert_allclose(affine[:3, 3], [0, -10, 40], atol=1e-5)


def test_read_knee_dicom_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="empty: no DICOM series found"):
        read_knee_volume(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not dicom" * 20)
    with pytest.raises(BadInputError, match="junk: no DICOM series found"):
        read_knee_volume(tmp_path / "junk")
    first = _write_dicom_series(tmp_path / "two", n=3, shuffle=False)
    _write_dicom_series(tmp_path / "other", n=4)
    for f in (tmp_path / "other").iterdir():
        f.rename(tmp_path / "two" / f"other_{f.name}")
    with pytest.raises(BadInputError, match=r"two: the folder holds 2 DICOM series .*pass series_uid"):
        read_knee_volume(tmp_path / "two")
    out, _ = read_knee_volume(tmp_path / "two", series_uid=first)
    assert out.shape == (3, 12, 10)
    with pytest.raises(BadInputError, match="series_uid '1.2.3' not found"):
        read_knee_volume(tmp_path / "two", series_uid="1.2.3")
