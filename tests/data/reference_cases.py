"""Reference cases of the dataset indexers: every layout's synthetic demo and the edge cases tests/data builds.

Each case builds a data set under a work folder, calls a public function of ``medplugin.data`` (the ones bundle
configs and the CLI call) and returns its result, or the error it raised (``"<type>: <message>"``). Paths are
written with the work folder as ``<work>``. ``tests/data/fixtures/indexer_reference.json`` holds the results of
these cases as the indexers gave them before they shared one base (captured from ``main`` at cabfff5 with
``python -m tests.data.reference_cases --write``); ``test_reference_datalists.py`` checks that the indexers
still give exactly those: the same entries, in the same order, with the same keys, in the same splits, and the
same error messages.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medplugin.data import chestxray14, datalist, fundus, knee, knee_segmentation, lungseg, oct2017
from medplugin.data.synthetic.chest_xray import make_chestxray14_demo, make_lung_seg_demo
from medplugin.data.synthetic.fundus import make_eyepacs_demo
from medplugin.data.synthetic.knee import make_knee_nifti_demo, make_mrnet_demo
from medplugin.data.synthetic.oct import make_oct2017_demo
from tests.data.test_chestxray14 import HEADER_2017, HEADER_2020, HEADER_EXACT, _many_followups, _release, _row
from tests.data.test_fundus import _aptos, _eyepacs, _jpeg
from tests.data.test_knee_segmentation import damage_pairs

FIXTURE = Path(__file__).parent / "fixtures" / "indexer_reference.json"
CASES: dict[str, Callable[[Demos], Any]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


class Demos:
    """The base data sets, each written once under ``work/base``; ``copy`` gives a case its own copy to damage."""

    BUILDERS: dict[str, Callable[[Path], Path]] = {
        "oct": lambda d: Path(make_oct2017_demo(d, train_patients=3, test_patients=1, images_per_patient=2,
                                                size=(48, 56), seed=1)["root"]),
        "oct_big": lambda d: Path(make_oct2017_demo(d, train_patients=8, test_patients=2, images_per_patient=3,
                                                    size=(48, 48), seed=5)["root"]),
        "eyepacs": lambda d: (make_eyepacs_demo(d, n_patients=14, size=48, seed=2, n_test_patients=4), d)[1],
        "eyepacs_hand": lambda d: _eyepacs(d, n_patients=12),
        "aptos": lambda d: _aptos(d, n=25),
        "chest": lambda d: Path(make_chestxray14_demo(d, n_patients=24, size=32, seed=0, max_follow_ups=4)["root"]),
        "chest_followups": lambda d: _release(d, _many_followups(30), folders=3),
        "mrnet": lambda d: Path(make_mrnet_demo(d, n_train=20, n_valid=6, slices=(3, 4), size=16, seed=0)["root"]),
        "knee": lambda d: Path(make_knee_nifti_demo(d, n=24, shape=(3, 16, 16), seed=0, exams_per_patient=2)["root"]),
        "knee_single": lambda d: Path(make_knee_nifti_demo(d, n=10, shape=(3, 16, 16), seed=4)["root"]),
        "lung": lambda d: (make_lung_seg_demo(d / "MontgomerySet", n=14, size=32, seed=3), d / "MontgomerySet")[1],
        "lung_pairs": lambda d: _images_masks(d),
    }

    def __init__(self, work: Path) -> None:
        self.work = Path(work)
        self._built: dict[str, Path] = {}
        self.case_dir = self.work / "cases"
        self._n = 0

    def start(self, name: str) -> None:
        """Folders made from now on belong to case ``name`` (their paths do not depend on the order cases run in)."""
        self.case_dir = self.work / "cases" / name.replace("/", "_")
        self._n = 0

    def get(self, name: str) -> Path:
        if name not in self._built:
            self._built[name] = self.BUILDERS[name](self.work / "base" / name)
        return self._built[name]

    def copy(self, name: str) -> Path:
        """A fresh copy of the base data set ``name`` (the folder a case may change)."""
        src = self.get(name)
        self._n += 1
        dst = self.case_dir / f"copy{self._n}" / src.name
        shutil.copytree(src, dst)
        return dst

    def folder(self) -> Path:
        self._n += 1
        path = self.case_dir / f"copy{self._n}"
        path.mkdir(parents=True)
        return path


def _images_masks(root: Path) -> Path:
    """images/ + masks/ lung set: 6 patients, p0 with 5 follow-ups, a JPEG image, a nested folder, an orphan mask."""
    from PIL import Image

    g = np.random.default_rng(0)
    for p in range(6):
        for k in range(5 if p == 0 else 1):
            name = f"sub/p{p}_{k}" if p == 1 else f"p{p}_{k}"
            img, m = g.integers(0, 255, (32, 40)), np.zeros((32, 40))
            m[8:20, 5:15] = 255
            for folder, arr, suffix in (("images", img, ".jpg" if p == 2 else ".png"), ("masks", m, ".png")):
                path = (root / folder / name).with_suffix(suffix)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(path)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(root / "masks" / "orphan.png")
    return root


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _relative_json(dl: dict, base: Path, path: Path) -> Path:
    """Write ``dl`` as a datalist JSON whose paths are relative to ``path``'s folder."""

    def rel(v):
        if isinstance(v, list):
            return [rel(x) for x in v]
        if isinstance(v, str) and v.startswith(str(base)):
            return str(Path(v).relative_to(path.parent))
        return v

    path.write_text(json.dumps({k: [{kk: rel(vv) for kk, vv in e.items()} for e in part] for k, part in dl.items()}))
    return path


# ------------------------------------------------------------------------------------------------ OCT2017
@case("oct/default")
def case_oct_default(d):
    return oct2017.index_oct2017(d.get("oct"))


@case("oct/val0.3_seed2")
def case_oct_val0_3_seed2(d):
    return oct2017.index_oct2017(d.get("oct"), val_fraction=0.3, seed=2)


@case("oct/big_seeds")
def case_oct_big_seeds(d):
    return {s: oct2017.index_oct2017(d.get("oct_big"), val_fraction=0.2, seed=s) for s in range(3)}


@case("oct/bundle_datalist")
def case_oct_bundle_datalist(d):
    return oct2017.oct2017_datalist(d.get("oct"), None, val_fraction=0.25, seed=4, on_bad_input="skip")


def _damaged_oct(d) -> Path:
    root = d.copy("oct")
    (root / "train" / "OTHER").mkdir()
    (root / "train" / "notes.txt").write_text("x")
    (root / "train" / "CNV" / "CNV-123-1.jpeg").write_bytes(b"")
    (root / "train" / "DME" / "DME-124-1.jpeg").write_bytes(b"not a jpeg at all")
    shutil.copy(next((root / "train" / "DME").glob("DME-*.jpeg")), root / "train" / "DME" / "CNV-125-1.jpeg")
    shutil.copy(next((root / "train" / "NORMAL").glob("*.jpeg")), root / "train" / "NORMAL" / "badname.jpeg")
    (root / "test" / "CNV" / ".DS_Store").write_bytes(b"")
    return root


@case("oct/bad_fail")
def case_oct_bad_fail(d):
    return oct2017.index_oct2017(_damaged_oct(d))


@case("oct/bad_skip")
def case_oct_bad_skip(d):
    return oct2017.index_oct2017(_damaged_oct(d), on_bad_input="skip")


def _oct_overlap(d) -> Path:
    root = d.copy("oct")
    test_img = sorted((root / "test" / "CNV").iterdir())[0]
    pid = oct2017.parse_oct_name(test_img.name)[1]
    shutil.copy(test_img, root / "train" / "CNV" / f"CNV-{pid}-9.jpeg")
    return root


@case("oct/test_patient_in_train")
def case_oct_test_patient_in_train(d):
    return oct2017.index_oct2017(_oct_overlap(d))


@case("oct/test_patient_in_train_kept")
def case_oct_test_patient_in_train_kept(d):
    return oct2017.index_oct2017(_oct_overlap(d), exclude_test_patients=False)


@case("oct/datalist_json")
def case_oct_datalist_json(d):
    root = d.get("oct")
    path = _relative_json(oct2017.index_oct2017(root, seed=3), root, root.parent / "dl.json")
    return oct2017.oct2017_datalist(None, path)


@case("oct/errors")
def case_oct_errors(d):
    out = []
    for call in (lambda: oct2017.index_oct2017(d.work / "nope"), lambda: oct2017.index_oct2017(d.folder()),
                 lambda: oct2017.index_oct2017(d.get("oct"), val_fraction=1.5),
                 lambda: oct2017.index_oct2017(d.get("oct"), val_fraction=0),
                 lambda: oct2017.index_oct2017(d.get("oct"), on_bad_input="ignore")):
        out.append(_error_of(call))
    root = d.copy("oct")
    for f in (root / "test").rglob("*.jpeg"):
        f.write_bytes(b"")
    out.append(_error_of(lambda: oct2017.index_oct2017(root, on_bad_input="skip")))
    return out


# ------------------------------------------------------------------------------------------------ fundus
@case("fundus/eyepacs_with_test")
def case_fundus_eyepacs_with_test(d):
    root = d.get("eyepacs")
    return {task: fundus.index_eyepacs(root, task=task, seed=1) for task in fundus.TASKS}


@case("fundus/eyepacs_bundle_datalist")
def case_fundus_eyepacs_bundle_datalist(d):
    return fundus.fundus_datalist(d.get("eyepacs"), None, task="referable", val_fraction=0.2, seed=3)


@case("fundus/eyepacs_solution_csv")
def case_fundus_eyepacs_solution_csv(d):
    root = d.copy("eyepacs")
    (root / "testLabels.csv").rename(root / "retinopathy_solution.csv")
    return fundus.index_fundus(root, task="grade", val_fraction=0.3, test_fraction=0.6)


@case("fundus/eyepacs_no_test_part")
def case_fundus_eyepacs_no_test_part(d):
    root = d.get("eyepacs_hand")
    return [fundus.index_eyepacs(root, val_fraction=v, test_fraction=t, seed=s)
            for v, t, s in ((0.1, 0.1, 0), (0.2, 0.3, 3), (0.15, 0.15, 7))]


@case("fundus/eyepacs_test_patient_in_train")
def case_fundus_eyepacs_test_patient_in_train(d):
    root = d.copy("eyepacs")
    first = sorted((root / "test").glob("*_left.jpeg"))[0]
    shutil.copy(first, root / "train" / first.name)
    with open(root / "trainLabels.csv", "a") as f:
        f.write(f"{first.stem},2\n")
    return fundus.index_eyepacs(root)


def _damaged_eyepacs(d) -> Path:
    root = d.copy("eyepacs_hand")
    rows = ["9_left,7", "10_left,x", "1_left,3", "noeye,1", ",2", "11_left,2", "12_right,1", "13_left,0"]
    with open(root / "trainLabels.csv", "a") as f:
        f.write("\n".join(rows) + "\n")
    _jpeg(root / "train" / "9_left.jpeg")
    (root / "train" / "2_right.jpeg").unlink()
    (root / "train" / "3_left.jpeg").write_bytes(b"")
    (root / "train" / "12_right.jpeg").write_bytes(b"GIF89a......")
    _jpeg(root / "train" / "13_left.png")
    return root


@case("fundus/eyepacs_bad_fail")
def case_fundus_eyepacs_bad_fail(d):
    return fundus.index_eyepacs(_damaged_eyepacs(d))


@case("fundus/eyepacs_bad_skip")
def case_fundus_eyepacs_bad_skip(d):
    return fundus.index_eyepacs(_damaged_eyepacs(d), on_bad_input="skip", task="referable")


@case("fundus/aptos")
def case_fundus_aptos(d):
    root = d.get("aptos")
    return [fundus.index_aptos(root), fundus.fundus_datalist(root, task="grade", val_fraction=0.2, test_fraction=0.2,
                                                             seed=5)]


@case("fundus/datalist_json")
def case_fundus_datalist_json(d):
    root = d.get("eyepacs")
    path = _relative_json(fundus.index_eyepacs(root, seed=2), root, root.parent / "dl.json")
    return [fundus.fundus_datalist(None, path, task=t) for t in fundus.TASKS]


@case("fundus/errors")
def case_fundus_errors(d):
    aptos = d.copy("aptos")
    (aptos / "train.csv").write_text("id_code,grade\nx,1\n")
    bad_json = d.folder() / "dl.json"
    _jpeg(bad_json.parent / "a.jpeg")
    bad_json.write_text(json.dumps({s: [{"image": "a.jpeg", "grade": "7"}] for s in ("training", "validation",
                                                                                        "test")}))
    calls = (lambda: fundus.index_fundus(d.folder()), lambda: fundus.index_fundus(d.get("aptos"), task="severity"),
             lambda: fundus.index_eyepacs(d.get("aptos")), lambda: fundus.index_aptos(aptos),
             lambda: fundus.index_eyepacs(d.get("eyepacs_hand"), val_fraction=0.5, test_fraction=0.5),
             lambda: fundus.index_eyepacs(d.get("eyepacs_hand"), val_fraction=0),
             lambda: fundus.index_aptos(d.get("aptos"), test_fraction=1),
             lambda: fundus.index_aptos(d.get("aptos"), on_bad_input="x"),
             lambda: fundus.fundus_datalist(None, bad_json, task="grade"))
    return [_error_of(c) for c in calls]


# ------------------------------------------------------------------------------------------------ ChestX-ray14
@case("chest/official_split")
def case_chest_official_split(d):
    root = d.get("chest")
    return [chestxray14.index_chestxray14(root), chestxray14.index_chestxray14(root, val_fraction=0.3, seed=2),
            chestxray14.index_chestxray14(root, val_fraction=0.0), chestxray14.index_chestxray14(root, views=None),
            chestxray14.index_chestxray14(root, views=["pa"])]


@case("chest/bundle_datalist")
def case_chest_bundle_datalist(d):
    root = d.get("chest")
    excl = d.folder() / "exclude.txt"
    excl.write_text("# bad\n00000002_000.png\nimages_001/images/00000005_000.png\n\n")
    return chestxray14.chestxray14_datalist(root, None, val_fraction=0.2, seed=1, views=("PA", "AP"),
                                            exclude_file=excl, on_bad_input="fail")


@case("chest/patient_split")
def case_chest_patient_split(d):
    root = d.copy("chest")
    (root / "train_val_list.txt").unlink()
    (root / "test_list.txt").unlink()
    return [chestxray14.index_chestxray14(root), chestxray14.index_chestxray14(root, val_fraction=0.2, seed=3),
            chestxray14.index_chestxray14(root, val_fraction=0.0, test_fraction=0.0)]


@case("chest/one_list_only")
def case_chest_one_list_only(d):
    root = d.copy("chest")
    (root / "test_list.txt").unlink()
    return chestxray14.index_chestxray14(root, seed=4)


@case("chest/followups")
def case_chest_followups(d):
    root = d.get("chest_followups")
    return {s: chestxray14.index_chestxray14(root, val_fraction=0.1, test_fraction=0.2, seed=s) for s in (3, 4)}


@case("chest/headers")
def case_chest_headers(d):
    rows = [_row(1, 0, "Cardiomegaly"), _row(1, 1, "Cardiomegaly|Emphysema"), _row(2, 0, "No Finding", "AP"),
            _row(3, 0, "Hernia|Pleural_Thickening|Atelectasis"), _row(4, 0, " infiltrate | mass "),
            _row(5, 0, "No Finding", " ap ")]
    out = []
    for header in (HEADER_2017, HEADER_2020, HEADER_EXACT, HEADER_2017.upper().replace(" ", "")):
        out.append(chestxray14.index_chestxray14(_release(d.folder(), rows, header=header), views=None,
                                                 val_fraction=0.0, test_fraction=0.0))
    return out


@case("chest/csv_choice_and_flat_folder")
def case_chest_csv_choice_and_flat_folder(d):
    root = _release(d.folder(), [_row(1, 0, "Mass")], header=HEADER_2020, csv_name="Data_Entry_2017_v2020.csv")
    (root / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + _row(1, 0, "Nodule") + "\n")
    flat = d.folder()
    (flat / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + _row(5, 0) + "\n" + _row(5, 1) + "\n")
    (flat / "images").mkdir()
    for n in ("00000005_000.png", "00000005_001.png"):
        (flat / "images" / n).write_bytes(b"")
    (flat / "images_002").mkdir()
    (flat / "images_002" / "00000005_001.png").write_bytes(b"")  # a duplicate name: the first folder wins
    kw = dict(val_fraction=0.0, test_fraction=0.0)
    return [chestxray14.index_chestxray14(root, **kw),
            chestxray14.index_chestxray14(root, csv_name="Data_Entry_2017.csv", **kw),
            chestxray14.index_chestxray14(flat, **kw)]


def _bad_chest(d) -> Path:
    rows = [_row(p, 0) for p in range(1, 11)] + [_row(20, 0, "Tumour"), _row(21, 0, ""), "00000022_000.png,Mass",
            _row(3, 0), ",No Finding,0,23,40,M,PA,1,1,1,1", _row(24, 0).replace(",24,", ",,", 1),
            _row(25, 0, view=""), "", "  ", _row(26, 0, "Mass||Nodule"), "dir/00000027_000.png" + _row(27, 0)[16:]]
    skip = ("00000007_000.png", "00000008_000.png", "", "  ", "dir/00000027_000.png")
    return _release(d.folder(), rows, skip_images=skip)


@case("chest/bad_rows_fail")
def case_chest_bad_rows_fail(d):
    return chestxray14.index_chestxray14(_bad_chest(d))


@case("chest/bad_rows_skip")
def case_chest_bad_rows_skip(d):
    return chestxray14.index_chestxray14(_bad_chest(d), on_bad_input="skip")


@case("chest/row_errors")
def case_chest_row_errors(d):
    out = []
    for bad in ("00000022_000.png,Mass", ",No Finding,0,23,40,M,PA,1,1,1,1", _row(24, 0).replace(",24,", ",,", 1),
                _row(25, 0, view=""), _row(26, 0, "Mass||Nodule"), _row(1, 0)):
        root = _release(d.folder(), [_row(1, 0), _row(2, 0), bad], skip_images=("",))
        out.append(_error_of(lambda root=root: chestxray14.index_chestxray14(root)))
    return out


@case("chest/missing_images")
def case_chest_missing_images(d):
    rows = [_row(p, 0) for p in range(1, 21)]
    root = _release(d.folder(), rows, skip_images=tuple(f"{p:08d}_000.png" for p in (3, 7, 8, 9, 11, 12, 15)))
    none = _release(d.folder(), rows[:3], skip_images=tuple(r.split(",")[0] for r in rows[:3]))
    return [_error_of(lambda: chestxray14.index_chestxray14(root)),
            chestxray14.index_chestxray14(root, on_bad_input="skip"),
            _error_of(lambda: chestxray14.index_chestxray14(none, on_bad_input="skip"))]


@case("chest/official_lists_bad")
def case_chest_official_lists_bad(d):
    root = _release(d.folder(), [_row(1, 0), _row(1, 1), _row(2, 0), _row(3, 0)])
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000001_001.png\n")
    both = _release(d.folder(), [_row(1, 0), _row(2, 0)])
    (both / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (both / "test_list.txt").write_text("00000002_000.png\n")
    return [_error_of(lambda: chestxray14.index_chestxray14(root)),
            _error_of(lambda: chestxray14.index_chestxray14(both))]


@case("chest/errors")
def case_chest_errors(d):
    root = d.get("chest")
    calls = (lambda: chestxray14.index_chestxray14(root, on_bad_input="ignore"),
             lambda: chestxray14.index_chestxray14(root, val_fraction=1.5),
             lambda: chestxray14.index_chestxray14(root, val_fraction="x"),
             lambda: chestxray14.index_chestxray14(root, views="PA"),
             lambda: chestxray14.index_chestxray14(root, views=[]),
             lambda: chestxray14.index_chestxray14(root, exclude_file=d.work / "nope.txt"),
             lambda: chestxray14.index_chestxray14(root, csv_name="other.csv"),
             lambda: chestxray14.index_chestxray14(d.work / "nowhere"),
             lambda: chestxray14.index_chestxray14(d.folder()))
    out = [_error_of(c) for c in calls]
    patient = d.copy("chest")
    (patient / "test_list.txt").unlink()
    out.append(_error_of(lambda: chestxray14.index_chestxray14(patient, val_fraction=0.5, test_fraction=0.5)))
    out.append(chestxray14.index_chestxray14(root, val_fraction=0.5, test_fraction=0.6))  # official: test unused
    for header in ("Image Index,Finding Labels,Follow-up #,Patient Age,Patient Gender,View Position", ""):
        folder = d.folder()
        (folder / "Data_Entry_2017.csv").write_text(header)
        out.append(_error_of(lambda folder=folder: chestxray14.index_chestxray14(folder)))
    return out


@case("chest/datalist_json_and_bbox")
def case_chest_datalist_json_and_bbox(d):
    root = d.get("chest")
    path = _relative_json(chestxray14.index_chestxray14(root, seed=6), root, root.parent / "dl.json")
    bad = json.loads(path.read_text())
    bad["validation"][1]["label"] = [1, 0]
    (root.parent / "bad.json").write_text(json.dumps(bad))
    return [chestxray14.chestxray14_datalist(None, path),
            _error_of(lambda: chestxray14.chestxray14_datalist(None, root.parent / "bad.json")),
            chestxray14.read_bbox_list(root / "BBox_List_2017.csv")]


# ------------------------------------------------------------------------------------------------ knee MRI
@case("knee/mrnet_tasks_planes")
def case_knee_mrnet_tasks_planes(d):
    root = d.get("mrnet")
    return {f"{t}/{p}": knee.index_mrnet(root, task=t, plane=p, val_fraction=0.25, seed=1)
            for t in knee.MRNET_TASKS for p in knee.MRNET_PLANES}


@case("knee/mrnet_bundle_datalist")
def case_knee_mrnet_bundle_datalist(d):
    root = d.get("mrnet")
    return [knee.knee_datalist(root, None, label_mode="binary", task="meniscus", plane="axial", val_fraction=0.15,
                               test_fraction=0.15, seed=0, on_bad_input="fail"),
            knee.index_mrnet(root, val_fraction=0), knee.index_knee_dataset(root, task="abnormal", seed=4),
            _error_of(lambda: knee.knee_datalist(root, label_mode="four"))]


def _damaged_mrnet(d) -> Path:
    root = d.copy("mrnet")
    (root / "train" / "sagittal" / "0003.npy").write_bytes(b"")
    (root / "train" / "sagittal" / "0004.npy").write_bytes(b"not numpy")
    (root / "train" / "sagittal" / "0005.npy").unlink()
    rows = list(csv.reader(open(root / "train-acl.csv")))
    _write_csv(root / "train-acl.csv", [["id", "label"]] + rows + [rows[0], [""], ["", " "]])
    return root


@case("knee/mrnet_bad_skip")
def case_knee_mrnet_bad_skip(d):
    return knee.index_mrnet(_damaged_mrnet(d), on_bad_input="skip", val_fraction=0.25)


@case("knee/mrnet_errors")
def case_knee_mrnet_errors(d):
    out = [_error_of(lambda: knee.index_mrnet(_damaged_mrnet(d)))]
    root = d.copy("mrnet")
    (root / "train" / "sagittal" / "0004.npy").write_bytes(b"not numpy")
    out.append(_error_of(lambda: knee.index_mrnet(root)))
    rows = list(csv.reader(open(root / "train-acl.csv")))
    for bad in (rows[:3] + [[rows[3][0], "2"]] + rows[4:], rows[:1] + [["abc", "1"]], rows[:1] + [["7"]],
                rows + [rows[0]], []):
        _write_csv(root / "train-acl.csv", bad)
        out.append(_error_of(lambda: knee.index_mrnet(root, plane="coronal")))
    (root / "valid-meniscus.csv").unlink()
    calls = (lambda: knee.index_mrnet(root, task="meniscus", plane="axial"), lambda: knee.index_mrnet(root, task="pcl"),
             lambda: knee.index_mrnet(root, plane="oblique"), lambda: knee.index_mrnet(root, val_fraction=1.5),
             lambda: knee.index_mrnet(root, on_bad_input="x"), lambda: knee.index_mrnet(d.work / "none"))
    return out + [_error_of(c) for c in calls]


@case("knee/clinical")
def case_knee_clinical(d):
    root = d.get("knee")
    return [knee.index_knee(root, val_fraction=0.25, test_fraction=0.25, seed=0),
            knee.index_knee(root, label_mode="binary", seed=2), knee.index_knee(root, val_fraction=0.0, seed=1),
            knee.index_knee(root, test_fraction=0.0, mask_dir="masks"),
            knee.knee_datalist(root, None, label_mode="four", val_fraction=0.2, test_fraction=0.2, seed=3),
            knee.index_knee_dataset(root, label_mode="binary"), knee.index_knee(d.get("knee_single"), seed=5)]


@case("knee/clinical_layout_variants")
def case_knee_clinical_layout_variants(d):
    root = d.copy("knee")
    rows = list(csv.reader(open(root / "labels.csv")))
    _write_csv(root / "labels.csv", [r[:2] for r in rows])
    out = [knee.index_knee(root, mask_dir="masks", seed=0)]
    (root / "exams" / "knee_000.nii.gz").unlink()
    (root / "exams" / "knee_000").mkdir()
    _write_csv(root / "labels.csv", [["exam ", " label"]] + [[r[0] + ".nii.gz", r[1]] for r in rows[1:]])
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + (root / "labels.csv").read_bytes())
    out.append(knee.index_knee(root, label_mode="binary"))
    return out


def _damaged_knee(d) -> Path:
    root = d.copy("knee")
    rows = list(csv.reader(open(root / "labels.csv")))
    rows[3][1] = "7"
    rows[5][1] = "partial"
    rows[7][2] = ""
    (root / "exams" / "knee_010.nii.gz").write_bytes(b"")
    _write_csv(root / "labels.csv", rows + [["knee_099", "1", "p99"], rows[1], ["", "1", "p"]])
    return root


@case("knee/clinical_bad_skip")
def case_knee_clinical_bad_skip(d):
    return knee.index_knee(_damaged_knee(d), on_bad_input="skip", val_fraction=0.2, test_fraction=0.2)


@case("knee/clinical_errors")
def case_knee_clinical_errors(d):
    out = []
    root = d.copy("knee")
    rows = list(csv.reader(open(root / "labels.csv")))
    variants = (rows[:3] + [[rows[3][0], "7", rows[3][2]]] + rows[4:], [["exam", "grade"]] + [r[:2] for r in rows[1:]],
                rows + [["knee_099", "1", "patient_099"]], rows + [rows[1]], rows[:5] + [[rows[5][0], "1", ""]],
                rows[:2] + [["", "1", "x"]], [rows[0]])
    for v in variants:
        _write_csv(root / "labels.csv", v)
        out.append(_error_of(lambda: knee.index_knee(root)))
    _write_csv(root / "labels.csv", rows)
    (root / "masks" / "knee_001.nii.gz").unlink()
    (root / "exams" / "knee_004.nii.gz").write_bytes(b"")
    out.append(_error_of(lambda: knee.index_knee(root, mask_dir="masks")))
    calls = (lambda: knee.index_knee(root, label_mode="three"),
             lambda: knee.index_knee(root, val_fraction=0.5, test_fraction=0.5),
             lambda: knee.index_knee(root, test_fraction=-0.1), lambda: knee.index_knee(root, image_dir="nope"),
             lambda: knee.index_knee(root, labels_csv="nope.csv"), lambda: knee.detect_knee_layout(d.folder()),
             lambda: knee.detect_knee_layout(d.work / "nowhere"))
    return out + [_error_of(c) for c in calls]


@case("knee/datalist_json")
def case_knee_datalist_json(d):
    root = d.get("knee")
    path = _relative_json(knee.index_knee(root, seed=1), root, root.parent / "dl.json")
    return [knee.knee_datalist(None, path, label_mode=m) for m in ("four", "binary")]


@case("knee/inference_lists")
def case_knee_inference_lists(d):
    folder = d.folder()
    (folder / "a" / "series").mkdir(parents=True)
    (folder / "x.nii.gz").write_bytes(b"1")
    (folder / "x.nii").write_bytes(b"1")
    np.save(folder / "a" / "0001.npy", np.zeros((2, 2, 2), np.uint8))
    (folder / "a" / "series" / "IM1").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    (folder / "b").mkdir()
    (folder / "b" / "IM1.dcm").write_bytes(b"\0" * 140)
    (folder / "notes.txt").write_text("not an exam")
    (folder / ".hidden.nii.gz").write_bytes(b"1")
    listing = folder / "list.txt"
    listing.write_text("x.nii.gz\n# comment\na/0001.npy\n\n" + str(folder / "a" / "series") + "\n")
    js = folder / "list.json"
    js.write_text(json.dumps({"testing": [{"image": "x.nii.gz"}, {"image": "x.nii"}]}))
    return [knee.index_knee_inputs(folder), knee.index_knee_inputs(folder, listing), knee.index_knee_inputs(None, js),
            knee_segmentation.index_knee_volumes(folder), knee_segmentation.index_knee_volumes(folder, listing),
            knee_segmentation.index_knee_volumes(None, js),
            _error_of(lambda: knee.index_knee_inputs(d.folder())),
            _error_of(lambda: knee_segmentation.index_knee_volumes(d.work / "missing"))]


# ------------------------------------------------------------------------------------------------ knee segmentation
@case("kneeseg/pairs")
def case_kneeseg_pairs(d):
    root = d.get("knee")
    return [knee_segmentation.index_knee_segmentation(root, val_fraction=0.2, test_fraction=0.2, seed=1),
            knee_segmentation.index_knee_segmentation(root, test_fraction=0.0),
            knee_segmentation.index_knee_segmentation(root, val_fraction=0.0, seed=3),
            knee_segmentation.kneeseg_datalist(root, None, val_fraction=0.15, test_fraction=0.15, seed=0,
                                               on_bad_input="fail"),
            knee_segmentation.index_knee_segmentation(d.get("knee_single"), seed=2)]


@case("kneeseg/images_folder_no_csv")
def case_kneeseg_images_folder_no_csv(d):
    folder = d.folder()
    shutil.copytree(d.get("knee") / "exams", folder / "images")
    shutil.copytree(d.get("knee") / "masks", folder / "masks")
    nib.save(nib.load(folder / "masks" / "knee_000.nii.gz"), folder / "masks" / "orphan.nii.gz")
    (folder / "images" / "readme.txt").write_text("x")
    return knee_segmentation.index_knee_segmentation(folder, val_fraction=0.25, test_fraction=0.25)


def _damaged_pairs(d) -> Path:
    root = d.copy("knee")
    damage_pairs(root)
    (root / "masks" / "knee_004.nii.gz").write_bytes(b"")
    (root / "masks" / "knee_005.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    return root


@case("kneeseg/bad_fail")
def case_kneeseg_bad_fail(d):
    return knee_segmentation.index_knee_segmentation(_damaged_pairs(d))


@case("kneeseg/bad_skip")
def case_kneeseg_bad_skip(d):
    return knee_segmentation.index_knee_segmentation(_damaged_pairs(d), on_bad_input="skip", seed=2)


@case("kneeseg/datalist_json_and_errors")
def case_kneeseg_datalist_json_and_errors(d):
    root = d.get("knee")
    path = _relative_json(knee_segmentation.index_knee_segmentation(root, seed=4), root, root.parent / "seg.json")
    empty = d.folder()
    (empty / "exams").mkdir()
    (empty / "masks").mkdir()
    no_masks = d.folder()
    (no_masks / "exams").mkdir()
    calls = (lambda: knee_segmentation.index_knee_segmentation(root, on_bad_input="ignore"),
             lambda: knee_segmentation.index_knee_segmentation(root, val_fraction=0.5, test_fraction=0.5),
             lambda: knee_segmentation.index_knee_segmentation(root, val_fraction=1.0),
             lambda: knee_segmentation.index_knee_segmentation(d.folder()),
             lambda: knee_segmentation.index_knee_segmentation(d.work / "nowhere"),
             lambda: knee_segmentation.index_knee_segmentation(root, image_dir="nope"),
             lambda: knee_segmentation.index_knee_segmentation(no_masks),
             lambda: knee_segmentation.index_knee_segmentation(empty))
    return [knee_segmentation.kneeseg_datalist(None, path)] + [_error_of(c) for c in calls]


# ------------------------------------------------------------------------------------------------ lung segmentation
@case("lung/montgomery")
def case_lung_montgomery(d):
    root = d.get("lung")
    return [lungseg.index_lungseg(root.parent, val_fraction=0.2, test_fraction=0.2, seed=0),
            lungseg.index_lungseg(root), lungseg.index_lungseg(root, test_fraction=0.0, seed=5),
            lungseg.lungseg_datalist(root, None, val_fraction=0.15, test_fraction=0.15, seed=2, on_bad_input="fail",
                                     patient_pattern=None),
            lungseg.index_lungseg(root, patient_pattern=r"^(x)")]


def _damaged_lung(d) -> Path:
    from PIL import Image

    root = d.copy("lung")
    names = sorted(p.stem for p in (root / "CXR_png").glob("*.png"))
    (root / "ManualMask" / "rightMask" / f"{names[0]}.png").unlink()
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "ManualMask" / "leftMask" / f"{names[1]}.png")
    (root / "CXR_png" / f"{names[2]}.png").write_bytes(b"")
    (root / "ManualMask" / "leftMask" / f"{names[3]}.png").write_bytes(b"\x89PNG broken")
    shutil.copy(root / "CXR_png" / f"{names[4]}.png", root / "CXR_png" / "other_name.png")
    for side in ("leftMask", "rightMask"):
        shutil.copy(root / "ManualMask" / side / f"{names[4]}.png", root / "ManualMask" / side / "other_name.png")
    return root


@case("lung/montgomery_bad_fail")
def case_lung_montgomery_bad_fail(d):
    return lungseg.index_lungseg(_damaged_lung(d))


@case("lung/montgomery_bad_skip")
def case_lung_montgomery_bad_skip(d):
    return lungseg.index_lungseg(_damaged_lung(d), on_bad_input="skip", val_fraction=0.2)


@case("lung/images_masks")
def case_lung_images_masks(d):
    root = d.get("lung_pairs")
    out = [lungseg.index_lungseg(root, val_fraction=0.2, test_fraction=0.2, seed=s, patient_pattern=r"^(p\d+)_\d+$")
           for s in range(3)]
    out.append(lungseg.index_lungseg(root, val_fraction=0.2, test_fraction=0.2))
    out.append(lungseg.index_lungseg(root, patient_pattern=r"p\d"))
    out.append(_error_of(lambda: lungseg.index_lungseg(root, patient_pattern=r"^p[012]_")))
    out.append(lungseg.index_lungseg(root, patient_pattern=r"^p[012]_", on_bad_input="skip", test_fraction=0.0,
                                     val_fraction=0.4))
    return out


@case("lung/images_masks_missing_mask")
def case_lung_images_masks_missing_mask(d):
    root = d.copy("lung_pairs")
    (root / "masks" / "p3_0.png").unlink()
    return [_error_of(lambda: lungseg.index_lungseg(root)), lungseg.index_lungseg(root, on_bad_input="skip")]


@case("lung/datalist_json_and_errors")
def case_lung_datalist_json_and_errors(d):
    root = d.get("lung")
    path = _relative_json(lungseg.index_lungseg(root, seed=1), root, root.parent / "lung.json")
    two = json.loads(path.read_text())
    two.pop("test")
    (root.parent / "two.json").write_text(json.dumps(two))
    gone = json.loads(path.read_text())
    gone["training"][0]["label"][1] = "MontgomerySet/ManualMask/rightMask/gone.png"
    (root.parent / "gone.json").write_text(json.dumps(gone))
    pairs = d.get("lung_pairs")
    single = _relative_json(lungseg.index_lungseg(pairs, seed=1), pairs, pairs.parent / "single.json")
    tiny = d.folder()
    make_lung_seg_demo(tiny, n=2, size=32, seed=0)
    calls = (lambda: lungseg.lungseg_datalist(None, root.parent / "gone.json"),
             lambda: lungseg.index_lungseg(d.folder()), lambda: lungseg.index_lungseg(d.work / "nope"),
             lambda: lungseg.index_lungseg(root, val_fraction=0.6, test_fraction=0.5),
             lambda: lungseg.index_lungseg(root, val_fraction=0.0),
             lambda: lungseg.index_lungseg(root, on_bad_input="ignore"),
             lambda: lungseg.index_lungseg(tiny))
    return ([lungseg.lungseg_datalist(None, path), lungseg.lungseg_datalist(None, root.parent / "two.json"),
             lungseg.lungseg_datalist(None, single)] + [_error_of(c) for c in calls])


# ------------------------------------------------------------------------------------------------ inference lists
@case("datalist/index_images_and_read_datalist")
def case_datalist_index_images_and_read_datalist(d):
    root = d.get("oct")
    listing = d.folder() / "list.json"
    listing.write_text(json.dumps([str(p) for p in sorted((root / "test").rglob("*.jpeg"))] + ["rel/a.png"]))
    text = listing.parent / "list.txt"
    text.write_text("a.png\n# c\n\nsub/a.png\n")
    dl = _relative_json(oct2017.index_oct2017(root), root, root.parent / "images.json")
    return [datalist.index_images(root), datalist.index_images(None, listing), datalist.index_images(root, text),
            datalist.index_images(root, dl), datalist.read_datalist(dl, required_keys=("image", "label")),
            _error_of(lambda: datalist.index_images(d.folder())),
            _error_of(lambda: datalist.read_datalist(root.parent / "nope.json"))]


# ------------------------------------------------------------------------------------------------ running
def _error_of(call: Callable[[], Any]) -> Any:
    try:
        return {"returned": call()}
    except Exception as e:  # the reference records the error a call raises
        return {"error": f"{type(e).__name__}: {e}"}


def run_case(name: str, demos: Demos) -> str:
    """The case's result (or error) as JSON text, with the work folder written ``<work>``."""
    demos.start(name)
    result = _error_of(lambda: CASES[name](demos))
    text = json.dumps(result, sort_keys=False)
    for prefix in {str(demos.work.resolve()), str(demos.work)}:
        text = text.replace(json.dumps(prefix)[1:-1], "<work>")
    return text


def write_reference(work: Path) -> None:
    demos = Demos(work)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{json.dumps(name)}: {run_case(name, demos)}" for name in CASES]
    FIXTURE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    import logging
    import tempfile

    logging.basicConfig(level=logging.ERROR)
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.data.reference_cases --write  (on the code to take the reference "
                         "from)")
    with tempfile.TemporaryDirectory(prefix="indexer-reference-") as tmp:
        write_reference(Path(tmp))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes, {len(CASES)} cases)")
