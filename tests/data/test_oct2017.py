import json
import shutil
from pathlib import Path

import pytest

from medplugin.cli import main
from medplugin.data.oct2017 import CLASSES, index_oct2017, parse_oct_name
from medplugin.data.splits import assert_disjoint_patients
from medplugin.errors import BadInputError


@pytest.fixture()
def oct_copy(oct_demo, tmp_path) -> Path:
    root = tmp_path / "OCT2017"
    shutil.copytree(oct_demo, root)
    return root


def test_demo_layout_matches_the_release(oct_demo):
    for split in ("train", "test"):
        assert sorted(p.name for p in (oct_demo / split).iterdir()) == list(CLASSES)
    for f in (oct_demo / "train" / "DME").iterdir():
        cls, pid = parse_oct_name(f.name)
        assert cls == "DME" and pid.isdigit()


def test_index_splits_by_patient(oct_demo):
    dl = index_oct2017(oct_demo, val_fraction=0.2, seed=0)
    assert set(dl) == {"training", "validation", "test"}
    assert_disjoint_patients(dl)
    assert len(dl["test"]) == 4 * 1 * 2
    assert len(dl["training"]) + len(dl["validation"]) == 4 * 3 * 2
    for e in dl["training"]:
        assert CLASSES[e["label"]] in e["image"] and Path(e["image"]).is_file()
    assert index_oct2017(oct_demo, val_fraction=0.2, seed=0) == dl


def test_unknown_class_folder_and_bad_files_are_reported_by_path(oct_copy):
    (oct_copy / "train" / "OTHER").mkdir()
    bad = oct_copy / "train" / "CNV" / "CNV-123-1.jpeg"
    bad.write_bytes(b"")
    wrong = oct_copy / "train" / "DME" / "DME-124-1.jpeg"
    wrong.write_bytes(b"not a jpeg at all")
    with pytest.raises(BadInputError) as e:
        index_oct2017(oct_copy)
    msg = str(e.value)
    assert "3 bad item(s)" in msg
    assert f"{oct_copy / 'train' / 'OTHER'}: unknown class folder 'OTHER'" in msg
    assert f"{bad}: empty file (0 bytes)" in msg
    assert f"{wrong}: not a JPEG file (bad header)" in msg
    # skip policy: indexing goes on without them
    dl = index_oct2017(oct_copy, on_bad_input="skip")
    assert all(e["image"] not in (str(bad), str(wrong)) for part in dl.values() for e in part)


def test_test_patients_are_kept_out_of_training(oct_copy):
    test_img = next((oct_copy / "test" / "CNV").iterdir())
    _, pid = parse_oct_name(test_img.name)
    shutil.copy(test_img, oct_copy / "train" / "CNV" / f"CNV-{pid}-9.jpeg")
    dl = index_oct2017(oct_copy)
    assert_disjoint_patients(dl)
    assert all(e["patient_id"] != pid for e in dl["training"] + dl["validation"])


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="dataset folder not found"):
        index_oct2017(tmp_path / "nope")
    with pytest.raises(BadInputError, match="no train/ folder"):
        index_oct2017(tmp_path)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        index_oct2017(tmp_path, val_fraction=1.5)


def test_cli_writes_the_same_datalist(oct_demo, tmp_path, capsys):
    out = tmp_path / "dl.json"
    assert main(["datalist", "oct2017", str(oct_demo), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == index_oct2017(oct_demo)
    # never overwrite without --force
    assert main(["datalist", "oct2017", str(oct_demo), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_demo_can_say_where_each_lesion_was_planted(tmp_path):
    """return_masks: a bool mask per written file, on the file's own grid; the same files are written either way."""
    import numpy as np
    from PIL import Image

    from medplugin.data.synthetic.oct import make_oct2017_demo

    got = make_oct2017_demo(tmp_path / "a", train_patients=1, test_patients=1, images_per_patient=1, size=(48, 64),
                            seed=3, return_masks=True)
    plain = make_oct2017_demo(tmp_path / "b", train_patients=1, test_patients=1, images_per_patient=1, size=(48, 64),
                              seed=3)
    assert "lesions" not in plain and len(got["lesions"]) == got["train"] + got["test"] == 8
    root = Path(got["root"])
    for name, mask in got["lesions"].items():
        assert name.split("/")[0] in ("train", "test") and (root / name).read_bytes() == (
            Path(plain["root"]) / name).read_bytes()
        with Image.open(root / name) as im:
            assert mask.dtype == bool and mask.shape == (im.height, im.width)
        assert mask.any() == (name.split("/")[1] != "NORMAL"), name
        if mask.any():  # the lesion is darker or brighter than the rest of its rows: it is in the picture
            img = np.asarray(Image.open(root / name), dtype=float)
            rows = mask.any(1)
            assert abs(img[mask].mean() - img[rows][~mask[rows]].mean()) > 5, name
