"""Inference inputs: a file in the input folder that is not an image is named in the log and gets its error row,
never dropped silently."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from medplugin.data.datalist import index_images


def test_a_text_file_among_the_images_is_named_in_the_log(tmp_path, caplog):
    for name in ("a.png", "sub/b.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("scanned on Monday\n")
    with caplog.at_level(logging.INFO, logger="medplugin.data.datalist"):
        entries = index_images(tmp_path)
    assert [e["name"] for e in entries][:2] == ["a", "sub__b"]  # the relative path, made a safe file name
    assert len(entries) == 3 and entries[2]["path"] == str(tmp_path / "notes.txt")
    assert entries[2]["error"] == f"{tmp_path / 'notes.txt'}: not an image file (JPEG, PNG, BMP, TIFF or DICOM " \
                                  "expected); skipped"
    assert "error" not in entries[0] and "error" not in entries[1]
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1
    assert f"1 file(s) under {tmp_path} skipped" in skipped[0]
    assert f"{tmp_path / 'notes.txt'}: not an image file" in skipped[0]
    assert "inference on 2 file(s)" in caplog.text


def test_the_text_file_becomes_an_error_row_without_being_read(tmp_path):
    import torch

    from medplugin.data import TolerantDataset

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("scanned on Monday\n")
    read = []

    def transform(d):
        read.append(d["path"])
        return {**d, "image": torch.ones(1, 4, 4)}

    ds = TolerantDataset(index_images(tmp_path), transform, fallback_shape=[1, 4, 4])
    good, text = ds[0], ds[1]
    assert good["error"] == "" and good["image"].sum() == 16
    assert text["error"].startswith(f"{tmp_path / 'notes.txt'}: not an image file") and text["image"].sum() == 0
    assert text["path"] == str(tmp_path / "notes.txt")
    assert read == [str(tmp_path / "a.png")]  # the text file was never handed to the preprocessing
