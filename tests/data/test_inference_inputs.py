"""Inference inputs: a file in the input folder that is not an image is named in the log, never dropped silently."""

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
    assert [e["name"] for e in entries] == ["a", "sub__b"]  # the relative path, made a safe file name
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1
    assert f"1 file(s) under {tmp_path} skipped" in skipped[0]
    assert f"{tmp_path / 'notes.txt'}: not an image file" in skipped[0]
    assert "inference on 2 file(s)" in caplog.text
