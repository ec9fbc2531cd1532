"""SegmentationWriter and SegmentationReportWriter on a tiny ignite Engine: masks read back with PIL and nibabel
on the input's own grid (2D PNG and DICOM, 3D NIfTI in a voxel order that is not the loader's), tables, Dice."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from medplugin.handlers import SegmentationReportWriter, SegmentationWriter
from medplugin.transforms import LoadKneeVolumed, lung_segmentation_preprocessing
from tests.transforms.spatial._planted import FILE_AFFINE, FILE_SHAPE, PLANT_LOADED, write_dicom, write_exam, write_png


def _run(handler, batches, runs: int = 1) -> Engine:
    engine = Engine(lambda e, b: b)  # the output is the batch: lists of per-item values
    handler.attach(engine)
    for _ in range(runs):
        engine.run(batches, max_epochs=1)
    return engine


def test_2d_masks_go_back_to_each_image_and_a_bad_item_gets_its_error(tmp_path):
    png, dcm = tmp_path / "in" / "cxr.png", tmp_path / "in" / "cr.dcm"
    png.parent.mkdir()
    mask = write_png(png)
    write_dicom(dcm, spacing=(0.7, 0.4))
    prep = lung_segmentation_preprocessing(image_size=16, track_meta=True)
    small = torch.as_tensor(mask[::3, ::5][None], dtype=torch.float32)  # the network-size label map
    speck = small.clone()
    speck[0, 0, 0] = 1  # a stray pixel the writer's cleaning removes
    batch = {"image": [prep({"image": str(p)})["image"] for p in (png, dcm)] + [torch.zeros(1, 16, 16)],
             "pred": [speck, small, torch.zeros(1, 16, 16)], "path": [str(png), str(dcm), str(tmp_path / "x.png")],
             "name": ["cxr", "cr", "x"], "error": ["", "", "x.png: truncated"]}
    out = tmp_path / "out"
    writer = SegmentationWriter(str(out), ["background", "lung"], keep_components=1, fill_holes=True,
                                csv_name="lung_boxes.csv", transform=prep)
    _run(writer, [batch], runs=2)  # a second run starts afresh
    # the foreground goes back bilinearly (then > 0.5): the planted rectangle on the image's own 48 x 80 grid,
    # its four corner pixels rounded off, the speck removed
    back = torch.nn.functional.interpolate(small[None], size=(48, 80), mode="bilinear")[0, 0].numpy() > 0.5
    assert (back != mask).sum() == 4
    written = np.asarray(Image.open(out / "masks" / "cxr.png"))
    np.testing.assert_array_equal(written, back * 255)
    nii = nib.load(out / "masks" / "cr.nii.gz")
    np.testing.assert_array_equal(np.asarray(nii.dataobj).T, back)  # x = column, y = row
    np.testing.assert_allclose(nii.affine, np.diag([0.4, 0.7, 1.0, 1.0]))  # the DICOM's pixel spacing
    box = json.loads((out / "boxes" / "cxr.json").read_text())
    assert box["bbox"] == {"x": 20, "y": 12, "width": 40, "height": 18} and box["image_size"] == [48, 80]
    assert box["voxels"] == int(back.sum()) and box["bbox_mm"] is None  # a PNG has no spacing
    cr = json.loads((out / "boxes" / "cr.json").read_text())
    assert cr["spacing_mm"] == [0.7, 0.4] and cr["area_mm2"] == pytest.approx(back.sum() * 0.28)
    assert cr["bbox_mm"] == {"min": [7.8, 8.05, 0.0], "max": [23.8, 20.65, 0.0]}  # outer pixel faces, x = col, y = row
    rows = list(csv.DictReader((out / "lung_boxes.csv").open()))
    assert [r["file"] for r in rows] == batch["path"]
    assert [r["x"] for r in rows] == ["20", "20", ""] and rows[2]["mask"] == "" and "truncated" in rows[2]["error"]
    assert len(json.loads((out / "rois.json").read_text())["images"]) == 3


def test_3d_mask_is_written_on_the_exam_files_grid(tmp_path):
    path = tmp_path / "exam.nii.gz"
    _, file_mask = write_exam(path)
    image = LoadKneeVolumed("image")({"image": str(path)})["image"]
    pred = torch.zeros(1, 10, 20, 20)
    pred[(0, *PLANT_LOADED)] = 1  # label map on the loader's (slice, row, col) grid
    batch = {"image": [image], "pred": [pred], "path": [str(path)], "name": ["exam"], "error": [""]}
    _run(SegmentationWriter(str(tmp_path / "out"), ["background", "acl"]), [batch])
    nii = nib.load(tmp_path / "out" / "masks" / "exam.nii.gz")
    assert nii.shape == FILE_SHAPE and np.allclose(nii.affine, FILE_AFFINE)
    data = np.asarray(nii.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, file_mask)
    rec = json.loads((tmp_path / "out" / "rois.json").read_text())["exams"][0]
    idx = np.nonzero(file_mask)
    assert rec["voxels"] == int(file_mask.sum()) and rec["volume_mm3"] == pytest.approx(file_mask.sum() * 0.75)
    assert rec["bbox_voxel"] == {"start": [int(i.min()) for i in idx], "end": [int(i.max()) + 1 for i in idx]}
    row = next(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert row["voxels"] == str(rec["voxels"]) and row["error"] == "" and "x" not in row


def test_report_writer_scores_2d_images_with_monais_dice_and_the_empty_rule(tmp_path):
    a = torch.zeros(1, 8, 8)
    a[0, 2:6, 2:6] = 1  # 16 pixels
    b = torch.zeros(1, 8, 8)
    b[0, 2:4, 2:6] = 1  # 8 of them
    two = lambda m: torch.cat([1 - m, m])  # noqa: E731 - a two-channel prediction, as after softmax
    batch = {"pred": [two(a), two(b), two(torch.zeros(1, 8, 8)), a], "label": [a, a, torch.zeros(1, 8, 8),
             torch.zeros(1, 8, 8)], "path": ["p1.png", "p2.png", "p3.png", "p4.png"]}
    engine = _run(SegmentationReportWriter(str(tmp_path)), [batch])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["dice"] for r in m["per_image"]] == [1.0, pytest.approx(2 * 8 / 24, abs=1e-6), 1.0, 0.0]
    assert [r["iou"] for r in m["per_image"]] == [1.0, 0.5, 1.0, 0.0]
    assert m["per_image"][1]["true_pixels"] == 16 and m["per_image"][1]["volume_error_pixels"] == 8
    assert m["n"] == 4 and m["mean_dice"] == pytest.approx(np.mean([1, 2 / 3, 1, 0]), abs=1e-6)
    assert engine.state.metrics["mean_dice"] == m["mean_dice"]
    with Image.open(tmp_path / "dice.png") as im:
        assert im.format == "PNG" and im.width > 100


def test_report_writer_names_exams_in_3d_and_refuses_an_empty_split(tmp_path):
    v = torch.zeros(1, 3, 4, 4)
    v[0, 1, 1:3, 1:3] = 1
    batch = {"pred": [v], "label": [v], "image_path": ["/d/knee_001.nii.gz"]}
    _run(SegmentationReportWriter(str(tmp_path)), [batch])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["per_exam"] == [{"file": "/d/knee_001.nii.gz", "dice": 1.0, "iou": 1.0, "true_voxels": 4,
                              "pred_voxels": 4, "volume_error_voxels": 0}]
    with pytest.raises(ValueError, match="no images were evaluated"):
        SegmentationReportWriter(str(tmp_path / "empty")).write()
