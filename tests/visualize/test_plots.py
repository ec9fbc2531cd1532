"""Evaluation plots stay readable with the chest bundle's 14 findings: no two curves share a colour and a dash."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medplugin.data.chestxray14 import FINDINGS
from medplugin.visualize.plots import curve_styles, plot_pr, plot_roc


def test_fourteen_curves_are_told_apart(tmp_path):
    styles = curve_styles(len(FINDINGS))
    assert len({(s["color"], s["ls"]) for s in styles}) == 14
    assert [s["color"] for s in styles[:10]] == [f"C{i}" for i in range(10)]  # up to 10: matplotlib's own cycle
    rng = np.random.default_rng(0)
    positives = rng.random((200, 14)) < 0.3
    scores = positives * 0.3 + rng.random((200, 14))
    plot_roc(scores, positives, FINDINGS, tmp_path / "roc.png")
    plot_pr(scores, positives, FINDINGS, tmp_path / "pr.png")
    for name in ("roc.png", "pr.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 500
