"""Resumable batch inference: rows streamed batch by batch, a torn last row cut off, finished inputs skipped; side
tables (dicom_outputs.csv) kept in step with the main table; a segmentation table streamed."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers import (
    InferenceProgress,
    MultiLabelPredictionWriter,
    PredictionWriter,
    SegmentationWriter,
    StreamingPredictions,
    pending_inputs,
)
from medplugin.handlers.streaming import completed_inputs
from medplugin.utils import run_dir

CLASSES = ["a", "b"]


def _batches(paths, size=2):
    out = []
    for i in range(0, len(paths), size):
        chunk = paths[i:i + size]
        out.append({"path": chunk, "error": ["bad file" if p.endswith("bad") else "" for p in chunk]})
    return out


def _engine(seen: list):
    def step(engine, batch):
        n = len(batch["path"])
        return {"pred": torch.tensor([[0.25, 0.75]] * n)}

    engine = Engine(step)

    @engine.on(Events.ITERATION_COMPLETED)
    def snapshot(e):  # what a crash right now would leave on disk (the flush of this batch has not run yet)
        seen.append(e.state.iteration)
    return engine


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_rows_are_on_disk_batch_by_batch_and_none_kept_in_memory(tmp_path):
    seen, sizes = [], []
    engine = _engine(seen)
    stream = StreamingPredictions(PredictionWriter(str(tmp_path), CLASSES))
    stream.attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)
    def cam_saver(e):  # attached after the writer, like CAMSaver: its outputs must exist before the row
        sizes.append(len(_rows(stream.path)) - 1)
        assert not stream.writer.rows or len(stream.writer.rows) == len(e.state.batch["path"])

    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: sizes.append(len(stream.writer.rows)))
    paths = [f"/in/{i}.png" for i in range(5)] + ["/in/x.bad"]
    engine.run(_batches(paths))
    assert sizes[0::2] == [0, 2, 4]  # when a later handler runs, this batch's rows are not in the file yet
    rows = _rows(stream.path)
    assert rows[0] == ["file", "prediction", "prob_a", "prob_b", "error"]
    assert [r[0] for r in rows[1:]] == paths
    assert rows[1][1:] == ["b", "0.250000", "0.750000", ""] and rows[-1][1:] == ["", "", "", "bad file"]
    assert stream.writer.rows == [] and stream.written == 6
    assert stream.path.read_bytes().endswith(b"\r\n")


def test_a_torn_last_row_is_cut_off_and_only_missing_inputs_run_again(tmp_path, caplog):
    out = tmp_path / "predictions.csv"
    out.write_bytes(b"file,prediction,prob_a,prob_b,error\r\n/in/0.png,b,0.250000,0.750000,\r\n"
                    b"/in/1.png,,,,bad file\r\n/in/2.png,b,0.25")  # killed while writing /in/2.png
    entries = [{"path": f"/in/{i}.png", "image": f"/in/{i}.png"} for i in range(4)]
    assert pending_inputs(entries, tmp_path, resume="false") == entries  # a command-line 'false'
    with caplog.at_level(logging.WARNING, logger="medplugin.handlers.streaming"):
        todo = pending_inputs(entries, tmp_path, resume="true")
    assert [e["path"] for e in todo] == ["/in/2.png", "/in/3.png"]  # the bad file's error row counts as done
    assert "dropping 16 bytes" in caplog.text
    assert out.read_bytes().endswith(b"bad file\r\n")
    assert completed_inputs(out) == {"/in/0.png", "/in/1.png"}

    stream = StreamingPredictions(PredictionWriter(str(tmp_path), CLASSES))
    engine = _engine([])
    stream.attach(engine)
    engine.run(_batches([e["path"] for e in todo]))
    rows = _rows(out)
    assert [r[0] for r in rows] == ["file", "/in/0.png", "/in/1.png", "/in/2.png", "/in/3.png"]  # header once


def test_resuming_into_a_file_of_other_columns_names_the_file(tmp_path):
    (tmp_path / "predictions.csv").write_text("file,prediction,prob_x,error\r\n")
    stream = StreamingPredictions(MultiLabelPredictionWriter(str(tmp_path), CLASSES))
    engine = _engine([])
    stream.attach(engine)
    with pytest.raises(BadInputError, match=r"predictions.csv.*columns \['file', 'prediction', 'prob_x', 'error'\] "
                                            r"are not this run's"):
        engine.run(_batches(["/in/0.png"]))


def test_resume_true_finds_the_newest_inference_run_with_predictions(tmp_path):
    (tmp_path / "inference_1").mkdir()
    (tmp_path / "inference_2").mkdir()
    (tmp_path / "inference_1" / "predictions.csv").write_text("file\r\n")
    assert run_dir(tmp_path, "inference", "true", marker="predictions.csv") == str(tmp_path / "inference_1")
    with pytest.raises(BadInputError, match="no earlier 'evaluate_\\*' run with a predictions.csv here"):
        run_dir(tmp_path, "evaluate", True, marker="predictions.csv")
    assert run_dir(tmp_path, "inference", False, marker="predictions.csv").startswith(str(tmp_path / "inference_"))


def test_progress_reports_files_per_second_and_time_left(caplog):
    progress = InferenceProgress(interval=1e-9, batch_key="path")
    engine = _engine([])
    progress.attach(engine)
    files = [{"path": f"/in/{i}", "error": ""} for i in range(6)]
    with caplog.at_level(logging.INFO, logger="medplugin.handlers.streaming"):
        engine.run(torch.utils.data.DataLoader(files, batch_size=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "medplugin.handlers.streaming"]
    assert lines[0].startswith("2/6 files, ") and " files/s, " in lines[0] and lines[0].endswith(" s left")
    assert lines[-1].startswith("6/6 files, ")
    with pytest.raises(ValueError, match="interval must be positive, got 0"):
        InferenceProgress(interval=0)


def test_the_parts_of_a_killed_multi_process_run_are_joined_before_resuming_in_one_process(tmp_path):
    header = b"file,prediction,prob_a,prob_b,error\r\n"
    (tmp_path / "predictions.rank0.csv").write_bytes(header + b"/in/0,b,0.25,0.75,\r\n/in/2,b,0.25,0.75,\r\n/in/4,b")
    (tmp_path / "predictions.rank1.csv").write_bytes(header + b"/in/1,,,,bad file\r\n")
    entries = [{"path": f"/in/{i}"} for i in range(6)]
    assert [e["path"] for e in pending_inputs(entries, tmp_path, resume=True)] == ["/in/3", "/in/4", "/in/5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    assert [r[0] for r in _rows(tmp_path / "predictions.csv")] == ["file", "/in/0", "/in/1", "/in/2"]


class _WithSideTable(PredictionWriter):
    """A prediction writer that also lists one object per input in a side table (as DicomSegmentationWriter lists
    its SEGs in dicom_outputs.csv)."""

    def __init__(self, output_dir, class_names):
        from medplugin.handlers.dicom import _Rows

        super().__init__(output_dir, class_names)
        self.objects = _Rows(self.path.parent)
        self.side_tables = [self.objects]

    def collect(self, engine):
        super().collect(engine)
        for p in engine.state.batch["path"]:
            self.objects.add(p, "SEG", f"/out/dicom/{p[-1]}.dcm")


def test_side_tables_are_joined_in_the_tables_order_and_lose_the_rows_of_inputs_run_again(tmp_path):
    """A killed two-process run: its part files are joined; the side row of /in/4 (written, then killed before its
    main row) is dropped and written again once; a kill's temporary file is removed."""
    head, side = b"file,prediction,prob_a,prob_b,error\r\n", b"file,object,dicom_file,error\r\n"
    (tmp_path / "predictions.rank0.csv").write_bytes(head + b"/in/0,b,0.25,0.75,\r\n/in/2,b,0.25,0.75,\r\n")
    (tmp_path / "predictions.rank1.csv").write_bytes(head + b"/in/1,,,,bad file\r\n")
    (tmp_path / "dicom_outputs.rank0.csv").write_bytes(side + b"/in/0,SEG,/out/dicom/0.dcm,\r\n/in/2,SEG,/out/dicom/2."
                                                              b"dcm,\r\n/in/4,SEG,/out/dicom/4.dcm,\r\n/in/6,SE")
    (tmp_path / "dicom_outputs.rank1.csv").write_bytes(side + b"/in/1,SEG,,bad file\r\n")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / ".4.png.k2j3.tmp").write_bytes(b"\x89PNG half")
    entries = [{"path": f"/in/{i}"} for i in range(6)]
    todo = pending_inputs(entries, tmp_path, resume=True)
    assert [e["path"] for e in todo] == ["/in/3", "/in/4", "/in/5"] and not list(tmp_path.rglob("*.tmp"))

    stream = StreamingPredictions(_WithSideTable(str(tmp_path), CLASSES))
    engine = _engine([])
    stream.attach(engine)
    engine.run(_batches([e["path"] for e in todo]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom_outputs.csv", "masks", "predictions.csv"]
    assert [r[0] for r in _rows(tmp_path / "predictions.csv")[1:]] == [f"/in/{i}" for i in range(6)]
    objects = _rows(tmp_path / "dicom_outputs.csv")
    assert objects[0] == ["file", "object", "dicom_file", "error"]
    assert [r[0] for r in objects[1:]] == [f"/in/{i}" for i in range(6)]  # each once, in input order
    assert objects[2] == ["/in/1", "SEG", "", "bad file"] and objects[5] == ["/in/4", "SEG", "/out/dicom/4.dcm", ""]


def test_a_segmentation_table_streams_with_its_columns_before_the_first_mask(tmp_path):
    stream = StreamingPredictions(SegmentationWriter(str(tmp_path), ["background", "lung"], csv_name="lung_boxes.csv",
                                                     spatial_dims=2))
    engine = _engine([])
    stream.attach(engine)
    engine.run(_batches(["/in/a.bad", "/in/b.bad"]))  # unreadable inputs: rows with their errors, no mask
    rows = _rows(tmp_path / "lung_boxes.csv")
    assert rows[0] == ["file", "mask", "voxels", "area_fraction", "area_mm2", "x", "y", "width", "height",
                       "bbox_voxel_start", "bbox_voxel_end", "bbox_mm_min", "bbox_mm_max", "error"]
    assert rows[1:] == [[p, *[""] * 12, "bad file"] for p in ("/in/a.bad", "/in/b.bad")]
    assert json.loads((tmp_path / "rois.json").read_text()) == {
        "class_names": ["background", "lung"],
        "images": [{"file": p, "mask": "", "error": "bad file"} for p in ("/in/a.bad", "/in/b.bad")]}
    engine = _engine([])
    StreamingPredictions(SegmentationWriter(str(tmp_path / "x"))).attach(engine)
    with pytest.raises(ValueError, match="give spatial_dims"):
        engine.run(_batches(["/in/c.bad"]))
