"""The input gate's header and content checks on real DICOM files and real loaders: inputs a chest classifier
was never made for are flagged with a reason naming the tag or property and the value."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from medplugin.gate import GateResult, InputGate, ScopeSpec, check_image, read_header  # noqa: E402
from tests.io._dicom_helpers import sample_file, with_phi  # noqa: E402

CHEST_SCOPE = {
    "dicom": {"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"], "ViewPosition": ["PA", "AP"]},
    "image": {"spatial_dims": 2, "colour": False, "intensity_range": [0, 255], "min_size": 32},
}


@pytest.fixture
def chest_gate() -> InputGate:
    return InputGate(CHEST_SCOPE)


def _loaded(path) -> np.ndarray:
    """A file as a MONAI bundle loads it: channel first, no intensity scaling."""
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))


def test_a_pa_chest_radiograph_is_in_scope(chest_gate):
    from medplugin.io import read_dicom_image

    path = sample_file("RG1_UNCR.dcm")
    image, _ = read_dicom_image(path)
    result = chest_gate.check_file(path, image=image[None])
    assert result.in_scope and result.out_of_scope_reason == "" and not result.refused
    assert result.as_row() == {"in_scope": True, "out_of_scope_reason": ""}


def test_a_dicom_of_the_wrong_modality(chest_gate):
    result = chest_gate.check_file(sample_file("MR_small.dcm"))  # a real MR slice
    assert not result.in_scope
    assert result.reasons == ("Modality is MR, expected CR or DX",)


def test_a_lateral_view(chest_gate, tmp_path):
    lateral = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "lat.dcm", ViewPosition="LL")
    result = chest_gate.check_file(lateral)
    assert result.out_of_scope_reason == "ViewPosition is LL, expected PA or AP"
    assert "Qzyxwvut" not in result.out_of_scope_reason  # reasons name tags and values, never the patient


def test_a_radiograph_of_another_body_part(chest_gate):
    result = chest_gate.check_file(sample_file("RG3_UNCR.dcm"))  # a real CR of an extremity, AP
    assert result.reasons == ("BodyPartExamined is EXTREMITY, expected CHEST",)


def test_a_colour_photograph(chest_gate, tmp_path):
    from PIL import Image

    from medplugin.data.synthetic.fundus import synthetic_fundus

    Image.fromarray(synthetic_fundus(size=96, rng=3)["image"]).save(tmp_path / "photo.png")
    result = chest_gate.check_file(tmp_path / "photo.png", image=_loaded(tmp_path / "photo.png"))
    assert read_header(tmp_path / "photo.png") is None  # not DICOM: no header rules
    (reason,) = result.reasons
    assert reason.startswith("a colour image (channels differ by ")
    assert reason.endswith("on average), expected grayscale")
    # a grayscale radiograph saved as RGB (equal channels), as some public datasets ship them, is not "colour"
    gray = np.repeat(np.linspace(0, 255, 64 * 64).reshape(1, 64, 64), 3, axis=0)
    assert check_image(gray, chest_gate.spec) == []


def test_a_knee_volume(chest_gate, tmp_path):
    import nibabel as nib

    from medplugin.data.synthetic.knee import synthetic_knee

    volume = synthetic_knee((12, 64, 64), condition=0, rng=0)["volume"] * 255
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), tmp_path / "knee.nii.gz")
    result = chest_gate.check_file(tmp_path / "knee.nii.gz", image=_loaded(tmp_path / "knee.nii.gz"))
    assert result.reasons == ("a 3-D volume of shape (12, 64, 64), expected a 2-D image",)


def test_content_rules(chest_gate):
    spec = chest_gate.spec
    raw16 = np.linspace(0, 65535, 64 * 64).reshape(1, 64, 64)
    assert check_image(raw16, spec) == ["intensity range 0..65535 outside the expected 0..255"]
    assert check_image(np.zeros((1, 64, 64)), spec) == ["a constant image (every value 0)"]
    assert check_image(np.linspace(0, 255, 16 * 16).reshape(1, 16, 16), spec) == [
        "an image of 16x16 pixels, smaller than 32"]
    nan = np.linspace(0, 255, 64 * 64).reshape(1, 64, 64)
    nan[0, 0, :3] = np.nan
    assert check_image(nan, spec) == ["3 NaN or infinite values"]
    flat_slice = np.linspace(0, 255, 64 * 64).reshape(1, 64, 64, 1)  # (C, H, W, 1): a 2-D image
    assert check_image(flat_slice, spec) == []
    fundus = ScopeSpec.from_config({"image": {"colour": True, "channels": [3]}})
    assert check_image(np.linspace(0, 1, 64 * 64).reshape(1, 64, 64), fundus) == [
        "1 channels, expected 3", "a grayscale image, expected a colour image"]


def test_policy_and_required_tags(tmp_path):
    no_body_part = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "a.dcm", BodyPartExamined=None)
    lenient = InputGate(CHEST_SCOPE)
    assert lenient.check_file(no_body_part).in_scope  # many real radiographs lack Body Part Examined
    strict = InputGate({"dicom": {"BodyPartExamined": {"values": ["CHEST"], "required": True}}}, policy="refuse")
    result = strict.check_file(no_body_part)
    assert result.reasons == ("BodyPartExamined is missing, expected CHEST",) and result.refused
    merged = GateResult(("a",), policy="refuse").merge(GateResult(("b",), ood_score=3.0))
    assert merged.out_of_scope_reason == "a; b" and merged.ood_score == 3.0 and merged.refused


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="scope.dicom: 'ViewPositon' is not a DICOM keyword"):
        ScopeSpec.from_config({"dicom": {"ViewPositon": ["PA"]}})
    with pytest.raises(ValueError, match=r"scope: unknown keys \['imgae'\]"):
        ScopeSpec.from_config({"imgae": {}})
    with pytest.raises(ValueError, match=r"scope.image: unknown keys \['colours'\]"):
        ScopeSpec.from_config({"image": {"colours": True}})
    with pytest.raises(ValueError, match=r"intensity_range must be \[low, high\] with high > low, got \[255.0, 0.0\]"):
        ScopeSpec.from_config({"image": {"intensity_range": [255, 0]}})
    with pytest.raises(ValueError, match=r"gate policy must be one of \('warn', 'refuse'\), got 'block'"):
        InputGate({}, policy="block")


def test_scope_check_transform_after_loading(tmp_path):
    """In a preprocessing pipeline: MONAI loads the file, ScopeCheckd reads its header and checks its content."""
    from monai.transforms import Compose, LoadImaged

    from medplugin.gate import ScopeCheckd

    lateral = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "lat.dcm", ViewPosition="LL")
    pipeline = Compose([LoadImaged("image", image_only=True, ensure_channel_first=True, reader="PydicomReader"),
                        ScopeCheckd("image", scope={"dicom": CHEST_SCOPE["dicom"]}, policy="refuse")])
    out = pipeline({"image": str(lateral)})
    assert out["in_scope"] is False and out["refused"] is True
    assert out["out_of_scope_reason"] == "ViewPosition is LL, expected PA or AP"
    assert tuple(out["image"].shape[1:]) in ((1955, 1841), (1841, 1955))  # the image itself is left alone
    ok = pipeline({"image": sample_file("RG1_UNCR.dcm")})
    assert ok["in_scope"] is True and ok["out_of_scope_reason"] == "" and ok["refused"] is False


def test_the_shape_of_a_file_its_reader_refused_comes_from_its_own_header(tmp_path):
    """A photograph or a radiograph given to the knee classifier (its volume reader refuses them): the gate still
    says why from the file's header alone, JPEG/PNG by PIL, DICOM by Rows/Columns/Number of Frames."""
    from PIL import Image

    from medplugin.gate import check_file_shape

    knee = InputGate({"dicom": {"Modality": ["MR"]}, "image": {"spatial_dims": 3}})
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "photo.jpg")
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "gray.png")
    assert knee.check_file(tmp_path / "photo.jpg").reasons == (
        "a 2-D image of shape (1, 40, 56), expected a 3-D volume",)
    assert check_file_shape(tmp_path / "gray.png", knee.spec) == [
        "a 2-D image of shape (1, 30, 20), expected a 3-D volume"]
    assert knee.check_file(sample_file("RG1_UNCR.dcm")).reasons == (
        "Modality is CR, expected MR", "a 2-D image of shape (1, 1955, 1841), expected a 3-D volume")
    assert check_file_shape(tmp_path / "photo.jpg", ScopeSpec(spatial_dims=2)) == []  # a 2-D model: in shape
