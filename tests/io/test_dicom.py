"""Tests of medplugin.io.dicom on real DICOM files (pydicom's test files and the pydicom-data store)."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, generate_uid  # noqa: E402

from medplugin.errors import BadInputError  # noqa: E402
from medplugin.io import is_dicom, read_dicom_image  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
SECRET_NAME = "Zyxwvutsr^Qponmlkj"
SECRET_ID = "PIDXQ-774411"
SECRET_BIRTH = "19010203"


def _testfile(name: str) -> str:
    """A pydicom test file (from pydicom itself or the pydicom-data store), or skip when it is not installed."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (install pydicom-data)")
    return str(path)


def _with_secrets(src: str, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = SECRET_BIRTH
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def _assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET_NAME, SECRET_ID, SECRET_BIRTH, "Zyxwvutsr", "Qponmlkj"):
            assert secret not in text


# --- real CR radiographs ---------------------------------------------------------------------------------


def test_real_cr_monochrome1_window():
    image, meta = read_dicom_image(_testfile("RG3_UNCR.dcm"))
    assert image.dtype == np.float32 and image.shape == (1760, 1760)
    assert 0.0 <= image.min() and image.max() <= 255.0
    assert meta == {
        "modality": "CR",
        "photometric_interpretation": "MONOCHROME1",
        "rows": 1760,
        "columns": 1760,
        "pixel_spacing": None,
        "transfer_syntax": "Explicit VR Little Endian",
        "sop_class": "Computed Radiography Image Storage",
        "bits_stored": 10,
        "frames": 1,
        "voi": "window",
    }
    # MONOCHROME1: the lowest stored values are displayed brightest
    raw = pydicom.dcmread(_testfile("RG3_UNCR.dcm")).pixel_array
    assert image[raw == raw.min()].mean() > image[raw == raw.max()].mean()


def test_jpeg2000_lossless_and_lossy_give_the_same_picture():
    ref, _ = read_dicom_image(_testfile("RG3_UNCR.dcm"))
    lossless, meta = read_dicom_image(_testfile("RG3_J2KR.dcm"))
    assert meta["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"
    np.testing.assert_array_equal(lossless, ref)
    lossy, meta = read_dicom_image(_testfile("RG3_J2KI.dcm"))
    assert meta["transfer_syntax"] == "JPEG 2000 Image Compression"
    # the lossy file's uncompressed twin is RG3_UNCI; against the lossless original the JPEG 2000 loss is small
    diff = np.abs(lossy - ref)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12.0


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_expb.dcm"]
)
def test_lossless_transfer_syntaxes_match_uncompressed(name):
    ref, ref_meta = read_dicom_image(_testfile("MR_small.dcm"))
    image, meta = read_dicom_image(_testfile(name))
    np.testing.assert_array_equal(image, ref)
    assert meta["transfer_syntax"] != ref_meta["transfer_syntax"] or name == "MR_small_expb.dcm"


def test_jpeg_lossless_and_extended_decode():
    image, meta = read_dicom_image(_testfile("JPEG-LL.dcm"))
    assert image.shape == (1024, 256) and meta["transfer_syntax"].startswith("JPEG Lossless")
    image, meta = read_dicom_image(_testfile("JPGExtended.dcm"))
    assert image.shape == (1024, 256) and meta["transfer_syntax"].startswith("JPEG Extended")


@pytest.mark.parametrize("name", ["NORMAL2-IM-1438-0001.jpeg", "person1951_bacteria_4882.jpeg"])
def test_real_chest_xray_in_jpeg_baseline_dx(tmp_path, name):
    """A real chest radiograph JPEG wrapped, unchanged, as a DX JPEG Baseline DICOM decodes as PIL decodes it."""
    from PIL import Image

    jpeg = (REAL / name).read_bytes()
    ref = np.asarray(Image.open(REAL / name).convert("L"), dtype=np.float64)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX For Presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.Rows, ds.Columns = ref.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)

    image, meta = read_dicom_image(path)
    assert meta["modality"] == "DX" and meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert meta["sop_class"] == "Digital X-Ray Image Storage - For Presentation"
    assert meta["pixel_spacing"] == [0.15, 0.15] and meta["voi"] == "minmax"
    expected = (ref - ref.min()) * 255.0 / (ref.max() - ref.min())
    diff = np.abs(image - expected)
    assert diff.mean() < 1.0 and diff.max() <= 8.0  # two JPEG decoders may differ by a level or so
    _assert_no_secrets(json.dumps(meta))


# --- intensity rules ---------------------------------------------------------------------------------------


def test_monochrome1_is_inverted_real_cr(tmp_path):
    """A real MONOCHROME1 CR read as MONOCHROME2 gives the exact inverse (same window, then 255 - x)."""
    src = _testfile("6154")  # a 16x16 CR, MONOCHROME1, with rescale and window
    m1, meta1 = read_dicom_image(src)
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    m2, meta2 = read_dicom_image(tmp_path / "m2.dcm")
    assert meta1["photometric_interpretation"] == "MONOCHROME1" and meta2["photometric_interpretation"] == "MONOCHROME2"
    np.testing.assert_allclose(m1, 255.0 - m2, atol=1e-4)
    assert abs(m1.mean() - (255.0 - m2.mean())) < 1e-3


def test_monochrome1_minmax_inverts_mean(tmp_path):
    src = _testfile("CT_small.dcm")  # no window: min-max scaling
    m2, meta = read_dicom_image(src)
    assert meta["voi"] == "minmax" and m2.min() == 0.0 and m2.max() == 255.0
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    m1, _ = read_dicom_image(tmp_path / "m1.dcm")
    np.testing.assert_allclose(m1, 255.0 - m2, atol=1e-4)


def test_window_maps_its_range_to_0_255(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window in HU
    ds.save_as(tmp_path / "w.dcm")
    image, meta = read_dicom_image(tmp_path / "w.dcm")
    assert meta["voi"] == "window"
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    assert np.all(image[hu <= 40 - 200] == 0.0) and np.all(image[hu > 40 + 200] == 255.0)
    inside = (hu > -100) & (hu < 180)
    expected = ((hu[inside] - 39.5) / 399 + 0.5) * 255  # DICOM LINEAR windowing, output range scaled
    np.testing.assert_allclose(image[inside], expected, atol=1e-3)


def test_invalid_window_falls_back_to_minmax(tmp_path, caplog):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 0
    ds.save_as(tmp_path / "w0.dcm")
    with caplog.at_level(logging.WARNING, logger="medplugin.io.dicom"):
        image, meta = read_dicom_image(tmp_path / "w0.dcm")
    assert meta["voi"] == "minmax" and image.max() == 255.0
    assert "window" in caplog.text


def test_voi_lut_sequence():
    image, meta = read_dicom_image(_testfile("vlut_04.dcm"))
    assert meta["voi"] == "voi_lut" and image.shape == (512, 512)
    assert 0.0 <= image.min() and image.max() <= 255.0


def test_rgb_and_palette_colour():
    image, meta = read_dicom_image(_testfile("SC_rgb.dcm"))
    assert image.shape == (100, 100, 3) and meta["voi"] is None
    assert image.max() == 255.0
    image, meta = read_dicom_image(_testfile("SC_rgb_jpeg_dcmtk.dcm"))  # YBR_FULL JPEG baseline -> RGB
    assert image.shape == (100, 100, 3) and meta["photometric_interpretation"] == "YBR_FULL"


# --- errors ------------------------------------------------------------------------------------------------


def test_missing_and_empty_and_not_dicom(tmp_path):
    with pytest.raises(BadInputError, match=r"nope\.dcm: file not found"):
        read_dicom_image(tmp_path / "nope.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty\.dcm: empty file \(0 bytes\)"):
        read_dicom_image(tmp_path / "empty.dcm")
    (tmp_path / "notes.txt").write_text("hello " * 100)
    with pytest.raises(BadInputError, match=r"notes\.txt: not a DICOM file: no 'DICM' marker"):
        read_dicom_image(tmp_path / "notes.txt")
    (tmp_path / "text.dcm").write_text("hello " * 100)
    with pytest.raises(BadInputError, match=r"text\.dcm: not a DICOM file"):
        read_dicom_image(tmp_path / "text.dcm")
    with pytest.raises(BadInputError, match="not a file"):
        read_dicom_image(tmp_path)


def test_is_dicom(tmp_path):
    assert is_dicom(_testfile("CT_small.dcm"))
    assert is_dicom(_testfile("6154"))  # no suffix, DICM marker
    assert not is_dicom(tmp_path / "missing.dcm")
    assert not is_dicom(tmp_path)
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 10)
    assert not is_dicom(tmp_path / "a.dcm")
    assert not is_dicom(REAL / "person1951_bacteria_4882.jpeg")
    # a bare dataset (no preamble, no file meta) is DICOM only with a .dcm/.dicom suffix
    bare = tmp_path / "bare.dcm"
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    pydicom.dcmwrite(bare, Dataset(ds), implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert is_dicom(bare)
    image, meta = read_dicom_image(bare)
    assert image.shape == (128, 128) and meta["transfer_syntax"] == "Implicit VR Little Endian"
    other = tmp_path / "bare.bin"
    other.write_bytes(bare.read_bytes())
    assert not is_dicom(other)


def test_no_pixel_data_names_file_and_sop_class(tmp_path):
    path = _with_secrets(_testfile("CT_small.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    pattern = r"nopix\.dcm: no pixel data: this DICOM holds no image \(SOP class CT Image Storage\)"
    with pytest.raises(BadInputError, match=pattern) as err:
        read_dicom_image(path)
    _assert_no_secrets(str(err.value))


@pytest.mark.parametrize(
    "name, message",
    [
        ("reportsi.dcm", r"no pixel data: this DICOM holds no image \(SOP class Basic Text SR Storage\)"),
        ("rtplan.dcm", r"no pixel data: this DICOM holds no image \(SOP class RT Plan Storage\)"),
        ("rtdose.dcm", r"not an image: SOP class RT Dose Storage"),
        ("liver.dcm", r"not an image: SOP class Segmentation Storage"),
    ],
)
def test_non_image_sop_classes(name, message):
    path = _testfile(name)
    with pytest.raises(BadInputError, match=message) as err:
        read_dicom_image(path)
    assert str(err.value).startswith(path)


def test_truncated_files(tmp_path):
    pattern = r"MR_truncated\.dcm: cannot decode the pixel data \(transfer syntax 'Explicit VR Little Endian'\)"
    with pytest.raises(BadInputError, match=pattern):
        read_dicom_image(_testfile("MR_truncated.dcm"))
    raw = Path(_testfile("CT_small.dcm")).read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(raw[:30000])
    with pytest.raises(BadInputError, match=r"cut_pixels\.dcm: cannot decode the pixel data"):
        read_dicom_image(tmp_path / "cut_pixels.dcm")
    (tmp_path / "cut_header.dcm").write_bytes(raw[:600])
    with pytest.raises(BadInputError, match=r"cut_header\.dcm: no pixel data.*may be truncated"):
        read_dicom_image(tmp_path / "cut_header.dcm")
    (tmp_path / "cut_meta.dcm").write_bytes(raw[:140])
    with pytest.raises(BadInputError, match=r"cut_meta\.dcm: truncated or corrupt"):
        read_dicom_image(tmp_path / "cut_meta.dcm")


def test_transfer_syntax_without_decoder(tmp_path):
    ds = pydicom.dcmread(_testfile("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
    ds.save_as(tmp_path / "mpeg.dcm")
    pattern = r"mpeg\.dcm: pixel data in transfer syntax 'MPEG2 Main Profile / Main Level'.*no decoder"
    with pytest.raises(BadInputError, match=pattern):
        read_dicom_image(tmp_path / "mpeg.dcm")


def test_missing_plugin_names_transfer_syntax(monkeypatch):
    fake = types.SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg - requires pylibjpeg-openjpeg"])
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: fake)
    pattern = r"RG3_J2KI\.dcm: pixel data in transfer syntax 'JPEG 2000 Image Compression'.*no pixel data plugin"
    with pytest.raises(BadInputError, match=pattern + r".*pylibjpeg-openjpeg"):
        read_dicom_image(_testfile("RG3_J2KI.dcm"))


def test_unexpected_dimensions(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.SamplesPerPixel = 3
    ds.save_as(tmp_path / "spp.dcm")
    with pytest.raises(BadInputError, match=r"spp\.dcm: unexpected dimensions: Samples per Pixel 3"):
        read_dicom_image(tmp_path / "spp.dcm")
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.Rows = 0
    ds.save_as(tmp_path / "rows.dcm")
    with pytest.raises(BadInputError, match=r"rows\.dcm: unexpected dimensions: Rows 0"):
        read_dicom_image(tmp_path / "rows.dcm")


# --- patient data never leaks ------------------------------------------------------------------------------


def test_patient_data_never_in_meta_errors_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ok = _with_secrets(_testfile("CT_small.dcm"), tmp_path / "ok.dcm")
    _, meta = read_dicom_image(ok)
    texts = [json.dumps(meta)]
    multi = _with_secrets(_testfile("emri_small.dcm"), tmp_path / "multi.dcm")
    _, meta = read_dicom_image(multi, frame=2)
    texts.append(json.dumps(meta))
    with pytest.raises(BadInputError) as err:  # several frames and none asked for
        read_dicom_image(multi)
    texts.append(str(err.value))
    bad_window = _with_secrets(_testfile("CT_small.dcm"), tmp_path / "w.dcm", WindowCenter=1, WindowWidth=0)
    read_dicom_image(bad_window)
    for changes in ({"PixelData": None}, {"Rows": 0}, {"SamplesPerPixel": 3}):
        path = _with_secrets(_testfile("CT_small.dcm"), tmp_path / "bad.dcm", **changes)
        with pytest.raises(BadInputError) as err:
            read_dicom_image(path)
        texts.append(str(err.value))
    raw = _with_secrets(_testfile("CT_small.dcm"), tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-1000])
    with pytest.raises(BadInputError) as err:
        read_dicom_image(tmp_path / "cut.dcm")
    texts.append(str(err.value))
    texts.append(caplog.text)
    _assert_no_secrets(*texts)


def test_redact_removes_identifying_values():
    from medplugin.io.dicom import _redact

    ds = Dataset()
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    msg = _redact(f"decoder said: {SECRET_NAME} / Qponmlkj / {SECRET_ID} / fine", ds)
    _assert_no_secrets(msg)
    assert msg.endswith("/ fine")


# --- chest radiographs: CR and DX, every compressed transfer syntax available ------------------------------


def test_real_chest_cr_uncompressed_and_jpeg2000():
    """RG1 (pydicom-data) is a real PA chest CR, MONOCHROME1 with a window: uncompressed, J2K lossless and lossy."""
    ref, meta = read_dicom_image(_testfile("RG1_UNCR.dcm"))
    assert ref.shape == (1955, 1841) and meta["modality"] == "CR"
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["voi"] == "window"
    raw = pydicom.dcmread(_testfile("RG1_UNCR.dcm")).pixel_array
    # MONOCHROME1: higher stored values are darker on a viewer; after reading, higher is brighter
    lo, hi = np.percentile(raw, [5, 95])
    assert ref[raw <= lo].mean() > ref[raw >= hi].mean() + 50
    lossless, meta = read_dicom_image(_testfile("RG1_J2KR.dcm"))
    assert meta["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"
    np.testing.assert_array_equal(lossless, ref)
    lossy, meta = read_dicom_image(_testfile("RG1_J2KI.dcm"))
    assert meta["transfer_syntax"] == "JPEG 2000 Image Compression"
    diff = np.abs(lossy - ref)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12.0


def _chest_cr_crop(size: int = 128):
    """The middle of the real chest CR RG1 as a small uncompressed dataset (same pixel module, fewer pixels)."""
    ds = pydicom.dcmread(_testfile("RG1_UNCR.dcm"))
    arr = ds.pixel_array
    r0, c0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    ds.PixelData = np.ascontiguousarray(arr[r0:r0 + size, c0:c0 + size]).tobytes()
    ds.Rows = ds.Columns = size
    return ds


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_real_chest_cr_reencoded_losslessly_reads_the_same(tmp_path, syntax):
    ds = _chest_cr_crop()
    ds.save_as(tmp_path / "unc.dcm")
    ref, _ = read_dicom_image(tmp_path / "unc.dcm")
    ds.compress(getattr(pydicom.uid, syntax))
    ds.save_as(tmp_path / "enc.dcm")
    image, meta = read_dicom_image(tmp_path / "enc.dcm")
    assert meta["transfer_syntax"] == getattr(pydicom.uid, syntax).name
    np.testing.assert_array_equal(image, ref)


def test_dx_radiograph_reads_like_the_same_cr(tmp_path):
    """DX (Digital X-Ray, For Presentation) goes through the same rules as CR."""
    ds = _chest_cr_crop()
    ds.save_as(tmp_path / "cr.dcm")
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.save_as(tmp_path / "dx.dcm")
    cr, _ = read_dicom_image(tmp_path / "cr.dcm")
    dx, meta = read_dicom_image(tmp_path / "dx.dcm")
    assert meta["modality"] == "DX" and meta["sop_class"] == "Digital X-Ray Image Storage - For Presentation"
    np.testing.assert_array_equal(dx, cr)


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm"])
def test_jpeg_ls_near_lossless_decodes(name):
    """Real JPEG-LS near-lossless files decode (pylibjpeg-libjpeg) to the pixels pydicom's decoder gives."""
    image, meta = read_dicom_image(_testfile(name))
    assert meta["transfer_syntax"] == "JPEG-LS Lossy (Near-Lossless) Image Compression"
    raw = pydicom.dcmread(_testfile(name)).pixel_array.astype(np.float64)
    assert image.shape == raw.shape and raw.max() > raw.min()
    np.testing.assert_allclose(image, (raw - raw.min()) * 255.0 / (raw.max() - raw.min()), atol=1e-3)


def test_jpeg_lossless_8bit_real_file():
    image, meta = read_dicom_image(_testfile("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert image.shape == (768, 1024) and meta["transfer_syntax"].startswith("JPEG Lossless")
    assert image.std() > 1.0  # a decoded picture, not a constant


def test_pixel_data_plugins_are_declared_dependencies():
    """The decoders the compressed syntaxes need are installed and listed in pyproject.toml."""
    from importlib.metadata import version

    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    for dist in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"):
        assert dist in names and version(dist)
