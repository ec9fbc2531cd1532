"""Bad input the fuzz tests found or the issue lists, each giving BadInputError(path, reason) from the readers."""

from __future__ import annotations

import json
import struct

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medplugin.data.chestxray14 import index_chestxray14
from medplugin.data.datalist import CsvReader, index_images, open_text, read_datalist
from medplugin.data.knee import index_knee, index_mrnet
from medplugin.errors import BadInputError
from medplugin.io.dicom import read_dicom_image
from medplugin.io.image2d import read_image_2d
from medplugin.io.mrnet import read_knee_volume


def _dicom_with_sequence(path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = [item]
    ds.save_as(path)
    raw = path.read_bytes()
    return raw, raw.index(b"\x08\x00\x40\x11SQ\x00\x00")  # (0008,1140) SQ, explicit VR little endian


@pytest.mark.parametrize("length", [0x7FFFFF00, 10])
def test_dicom_with_a_broken_sequence_length(tmp_path, length):
    raw, at = _dicom_with_sequence(tmp_path / "ok.dcm")
    path = tmp_path / "broken_seq.dcm"
    path.write_bytes(raw[:at + 8] + struct.pack("<I", length) + raw[at + 12:])
    with pytest.raises(BadInputError, match="no pixel data.*the file may be truncated") as e:
        read_image_2d(path)
    assert e.value.path == str(path)


def test_dicom_with_an_unknown_vr_or_transfer_syntax(tmp_path):
    raw = bytearray(open(get_testdata_file("CT_small.dcm"), "rb").read())
    at = raw.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID
    raw[at + 4:at + 6] = b"U\x00"
    (tmp_path / "vr.dcm").write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match=r"corrupt DICOM data element \(NotImplementedError: Unknown Value"):
        read_dicom_image(tmp_path / "vr.dcm")
    raw = bytearray(open(get_testdata_file("CT_small.dcm"), "rb").read())
    at = raw.index(b"1.2.840.10008.1.2.1")
    raw[at] = 0
    (tmp_path / "ts.dcm").write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="unknown Transfer Syntax UID"):
        read_dicom_image(tmp_path / "ts.dcm")


def test_nifti_with_an_empty_axis_or_a_nan_affine(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(BadInputError, match=r"volume is empty \(shape"):
        read_knee_volume(tmp_path / "empty.nii")
    nib.save(nib.Nifti1Image(np.zeros((5, 0, 1), np.float32), np.eye(4)), tmp_path / "empty2d.nii")
    with pytest.raises(BadInputError, match="image is empty"):
        read_image_2d(tmp_path / "empty2d.nii")
    vol = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    img = nib.Nifti1Image(vol, np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(np.eye(4), code=1)
    raw = bytearray(img.to_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]: nibabel will not write a NaN affine itself
    (tmp_path / "nan_affine.nii").write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match=r"\(affine\) holds NaN or infinite values: damaged header"):
        read_knee_volume(tmp_path / "nan_affine.nii")


def test_nifti_volume_given_to_the_2d_reader_names_its_shape(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(BadInputError, match=r"expected a 2D NIfTI image \(x, y\), got shape \(4, 5, 3\)"):
        read_image_2d(tmp_path / "vol.nii.gz")


@pytest.mark.parametrize("content, reason", [
    (b"\x80\x81id,label\n", r"not a UTF-8 text file \(byte 0x80 at offset 0\)"),
    (b"0000,1\n00\x0001,0\n", "holds a NUL byte"),
    (b'0000,1\n"0001,0\n' + b"x" * 140000 + b"\n", r"line \d+: malformed CSV \(field larger than field limit"),
])
def test_binary_or_damaged_label_files(tmp_path, content, reason):
    from medplugin.data.synthetic.knee import make_mrnet_demo

    make_mrnet_demo(tmp_path, n_train=4, n_valid=2, slices=(4, 5), size=16, seed=0)
    (tmp_path / "train-acl.csv").write_bytes(content)
    with pytest.raises(BadInputError, match=reason) as e:
        index_mrnet(tmp_path)
    assert e.value.path == str(tmp_path / "train-acl.csv")


def test_binary_chestxray14_csv_and_knee_csv(tmp_path):
    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    make_chestxray14_demo(tmp_path / "chest", n_patients=3, size=32, seed=0)
    csv_path = tmp_path / "chest" / "Data_Entry_2017.csv"
    csv_path.write_bytes(b"\xff\xfe" + csv_path.read_bytes()[2:])
    with pytest.raises(BadInputError, match="not a UTF-8 text file") as e:
        index_chestxray14(tmp_path / "chest")
    assert e.value.path == str(csv_path)
    info = make_knee_nifti_demo(tmp_path / "knee", n=6, shape=(6, 16, 16), seed=0)
    knee_csv = next((tmp_path / "knee").glob("*.csv"))
    knee_csv.write_bytes(knee_csv.read_bytes() + b"\x9c\n")
    with pytest.raises(BadInputError, match="not a UTF-8 text file"):
        index_knee(tmp_path / "knee", labels_csv=knee_csv.name)
    assert info


def test_datalists_with_missing_files_or_binary_content(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    dl = {"training": [{"image": "a.png", "label": 0}], "validation": [{"image": "gone.png", "label": 1}],
          "test": []}
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    with pytest.raises(BadInputError, match=r"1 entr\(ies\) name missing files: \['validation\[0\] .*gone.png"):
        read_datalist(tmp_path / "dl.json", required_keys=("image", "label"))
    (tmp_path / "list.txt").write_bytes(b"a.png\n\xc3\x28.png\n")
    with pytest.raises(BadInputError, match="not a UTF-8 text file") as e:
        index_images(tmp_path, tmp_path / "list.txt")
    assert e.value.path == str(tmp_path / "list.txt")


def test_open_text_and_csv_reader_keep_good_files_intact(tmp_path):
    (tmp_path / "ok.csv").write_bytes("\ufeffexam,label\r\nx,1\r\n\"a,b\",0\r\n".encode())
    rows = list(CsvReader(open_text(tmp_path / "ok.csv"), tmp_path / "ok.csv"))
    assert rows == [["exam", "label"], ["x", "1"], ["a,b", "0"]]
