"""The indexer base: bad-input policy and problem report, patient split, test-part policies, datalist-or-folder."""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from pathlib import Path

import pytest

from medplugin.data import chestxray14, fundus, knee, knee_segmentation, lungseg, oct2017
from medplugin.data.indexer import DatasetIndexer, ProblemReport, Scan
from medplugin.data.splits import patient_level_split
from medplugin.errors import BadInputError

INDEXERS = [oct2017.Oct2017Indexer, fundus.FundusIndexer, chestxray14.ChestXray14Indexer, knee.MRNetIndexer,
            knee.KneeIndexer, knee_segmentation.KneeSegmentationIndexer, lungseg.LungSegmentationIndexer]


class NotesIndexer(DatasetIndexer):
    """A small layout for these tests: ``train/<patient>_<n>_<label>.txt``, optionally ``test/`` alike.

    A file whose content is ``bad`` is a bad item.
    """

    name = "notes"
    may_have_test_part = True

    def scan(self) -> Scan:
        if not self.root.is_dir():
            raise BadInputError(self.root, "notes folder not found")
        train = self._entries(self.root / "train")
        test = self._entries(self.root / "test") if (self.root / "test").is_dir() else None
        self.problems.close()
        if not train:
            raise BadInputError(self.root, "no usable notes")
        return Scan(train, test, self.root / "test")

    def _entries(self, folder: Path) -> list[dict]:
        out = []
        for f in sorted(folder.iterdir()):
            if f.read_text() == "bad":
                self.problems.add(f, "says it is bad")
                continue
            patient, _, label = f.stem.split("_")
            out.append({"image": str(f), "label": int(label), "patient_id": patient})
        return out


class NotesAnyOverlap(NotesIndexer):
    test_overlap = "error"


def _notes(root: Path, patients=range(20), per=3, folder="train", bad=()) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for p in patients:
        for n in range(per):
            f = root / folder / f"p{p:02d}_{n}_{p % 2}.txt"
            f.write_text("bad" if (p, n) in bad else "ok")
    return root


def test_the_base_is_abstract_and_every_indexer_keeps_its_signatures():
    with pytest.raises(TypeError, match="abstract"):
        DatasetIndexer("x")  # scan is abstract
    for cls in INDEXERS:
        assert issubclass(cls, DatasetIndexer) and not inspect.isabstract(cls)
        for method in ("scan", "check_datalist", "check_fractions", "index", "load", "split", "patient_split"):
            assert inspect.signature(getattr(cls, method)) == inspect.signature(getattr(DatasetIndexer, method)), (
                f"{cls.__name__}.{method} changes the base's signature")


def test_problem_report_fail_lists_every_item_skip_warns_once(caplog):
    report = ProblemReport("fail", "/data/set")
    for i in range(53):
        report.add(f"/data/set/f{i}.png", "empty file (0 bytes)")
    report.add("/data/set", "7 image(s) missing", count=7)
    with pytest.raises(BadInputError) as e:
        report.close()
    msg = str(e.value)
    assert msg.startswith("/data/set: 60 bad item(s) (on_bad_input='fail'):\n  /data/set/f0.png: empty file (0 bytes)")
    assert "/data/set/f49.png: empty file" in msg and "f50.png" not in msg and msg.endswith("... and 4 more")
    report.close()  # the items were reported: nothing left

    skip = ProblemReport("skip", "/data/set", logger=logging.getLogger("medplugin.data.test"))
    skip.add("/data/set/a.png", "not a PNG file")
    skip.add("/data/set/b.png", "empty file (0 bytes)")
    with caplog.at_level(logging.WARNING):
        skip.close()
        skip.close()
    assert len(caplog.records) == 1 and caplog.records[0].name == "medplugin.data.test"
    assert caplog.records[0].getMessage() == (
        "skipping 2 bad item(s) of /data/set (on_bad_input='skip'):\n  /data/set/a.png: not a PNG file\n"
        "  /data/set/b.png: empty file (0 bytes)")


def test_problem_report_fail_fast_and_argument_check():
    fast = ProblemReport("fail", "/x", fail_fast=True)
    with pytest.raises(BadInputError, match=r"^/x/labels\.csv: row 4: unknown label '7'$"):
        fast.add("/x/labels.csv", "row 4: unknown label '7'")
    skip = ProblemReport("skip", "/x", fail_fast=True)
    skip.add("/x/labels.csv", "row 4: unknown label '7'")  # skip: recorded, not raised
    assert skip.items == [("/x/labels.csv", "row 4: unknown label '7'", 1)]
    with pytest.raises(ValueError, match=r"on_bad_input must be 'fail' or 'skip', got 'warn'"):
        ProblemReport("warn")


def test_three_way_split_by_patient_and_zero_parts(tmp_path):
    root = _notes(tmp_path)
    dl = NotesIndexer(root, val_fraction=0.2, test_fraction=0.2, seed=1).index()
    assert list(dl) == ["training", "validation", "test"]
    where = {}
    for part, entries in dl.items():
        for e in entries:
            assert where.setdefault(e["patient_id"], part) == part
    assert sum(map(len, dl.values())) == 60 and [len(v) // 3 for v in dl.values()] == [12, 4, 4]
    assert {e["label"] for e in dl["validation"]} == {0, 1}  # stratified by label
    no_val = NotesIndexer(root, val_fraction=0, test_fraction=0.3).index()
    assert no_val["validation"] == [] and len(no_val["test"]) == 18 and len(no_val["training"]) == 42
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        NotesIndexer(root, val_fraction=1.5)
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \[0, 1\), got 'x'"):
        NotesIndexer(root, test_fraction="x")
    # the sum is checked where the test part is carved out: here at once, since the layout has no test/
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1, got 0.6 \+ 0.4"):
        NotesIndexer(root, val_fraction=0.6, test_fraction=0.4).index()


def test_the_release_test_part_is_kept_and_its_patients_never_train(tmp_path, caplog):
    root = _notes(tmp_path)
    _notes(root, patients=(18, 19, 30, 31), folder="test")  # p18, p19 are in train/ too
    with caplog.at_level(logging.WARNING):
        dl = NotesIndexer(root, val_fraction=0.25, test_fraction=0.9, seed=2).index()  # test_fraction unused
    assert {e["patient_id"] for e in dl["test"]} == {"p18", "p19", "p30", "p31"} and len(dl["test"]) == 12
    assert not {e["patient_id"] for e in dl["training"] + dl["validation"]} & {"p18", "p19"}
    assert sum(len(dl[k]) for k in ("training", "validation")) == 54
    assert "2 patient(s) of the test part" in caplog.text and caplog.records[0].name == __name__
    with pytest.raises(BadInputError, match=r"test: the official split is not patient-disjoint: 2 patient\(s\) "
                                            r"appear in more than one split: p18 in \['test', 'train_val'\]"):
        NotesAnyOverlap(root).index()


def test_bad_items_fail_with_every_name_or_are_skipped(tmp_path, caplog):
    root = _notes(tmp_path, bad={(3, 1), (7, 0)})
    with pytest.raises(BadInputError) as e:
        NotesIndexer(root).index()
    assert str(e.value) == (f"{root}: 2 bad item(s) (on_bad_input='fail'):\n  {root}/train/p03_1_1.txt: says it is bad"
                            f"\n  {root}/train/p07_0_1.txt: says it is bad")
    with caplog.at_level(logging.WARNING):
        dl = NotesIndexer(root, on_bad_input="skip").index()
    assert sum(map(len, dl.values())) == 58 and "skipping 2 bad item(s)" in caplog.text
    shutil.rmtree(root / "train")
    _notes(root, patients=[1], bad={(1, 0), (1, 1), (1, 2)})
    with pytest.raises(BadInputError, match="no usable notes"):
        NotesIndexer(root, on_bad_input="skip").index()


def test_load_reads_the_datalist_json_or_indexes_the_folder(tmp_path):
    root = _notes(tmp_path / "notes")
    dl = NotesIndexer(root, seed=5).index()
    path = tmp_path / "dl.json"
    path.write_text(json.dumps({k: [{**e, "image": str(Path(e["image"]).relative_to(tmp_path))} for e in v]
                                for k, v in dl.items()}))
    assert NotesIndexer(None).load(path) == dl  # relative paths are resolved against the JSON's folder
    assert NotesIndexer(root, seed=5).load(None) == dl
    with pytest.raises(BadInputError, match="no dataset folder given"):
        NotesIndexer(None).load(None)
    path.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(BadInputError, match=r"dl\.json: no 'test' section"):
        NotesIndexer(None).load(path)


def test_mrnet_exam_in_train_and_valid_names_the_valid_csv(tmp_path):
    from medplugin.data.synthetic.knee import make_mrnet_demo

    make_mrnet_demo(tmp_path, n_train=8, n_valid=4, slices=(3, 4), size=16, seed=0)
    shutil.copy(tmp_path / "train" / "sagittal" / "0002.npy", tmp_path / "valid" / "sagittal" / "0002.npy")
    with open(tmp_path / "valid-acl.csv", "a") as f:
        f.write("0002,1\n")
    with pytest.raises(BadInputError, match=r"valid-acl\.csv: the official split is not patient-disjoint: "
                                            r"1 patient\(s\) appear in more than one split: 0002"):
        knee.index_mrnet(tmp_path)


def test_stratify_by_a_function_of_the_entry():
    items = [{"patient_id": f"p{p}", "label": [float(p % 3 == 0), 0.0], "k": k} for p in range(30) for k in range(2)]
    fractions = {"training": 0.8, "validation": 0.2}
    by_function = patient_level_split(items, fractions, seed=4, stratify_key=lambda e: int(any(e["label"])))
    proxies = [{"patient_id": e["patient_id"], "any": int(any(e["label"]))} for e in items]
    by_key = patient_level_split(proxies, fractions, seed=4, stratify_key="any")
    assert [e["patient_id"] for e in by_function["validation"]] == [e["patient_id"] for e in by_key["validation"]]
    assert {int(any(e["label"])) for e in by_function["validation"]} == {0, 1}


def test_knee_segmentation_binary_labels_csv_is_a_clear_error(tmp_path):
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    make_knee_nifti_demo(tmp_path, n=4, shape=(3, 16, 16), seed=0, exams_per_patient=2)
    (tmp_path / "labels.csv").write_bytes(b"exam,label,patient\nknee_000,1,\xff\n")
    with pytest.raises(BadInputError, match=r"labels\.csv: not a UTF-8 text file"):
        knee_segmentation.index_knee_segmentation(tmp_path)
