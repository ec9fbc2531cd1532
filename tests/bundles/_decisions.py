"""Issue 15's "done" checks on a classification bundle's real runs: what training stores in model.json, what
evaluation writes (intervals, operating points, calibration, reliability.png, predictions.csv) and inference's
call columns."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"


def check_model_json(ckpt: Path, class_names: list[str], per_class_temperature: bool = False) -> dict:
    """``model.json`` has a positive ``temperature`` (one, or one per finding) and an operating point per class with
    its threshold, criterion and validation sensitivity/specificity."""
    meta = json.loads((ckpt / "model.json").read_text())
    t = meta["temperature"]
    ts = t if per_class_temperature else [t]
    assert len(ts) == (len(class_names) if per_class_temperature else 1), t
    assert all(isinstance(v, (int, float)) and v > 0 for v in ts), t
    points = meta["operating_points"]
    assert set(class_names) <= set(points), (class_names, list(points))
    for c in class_names:
        p = points[c]
        assert 0.0 <= p["threshold"] <= 1.0 and p["criterion"] == "youden", (c, p)
        if "fallback" not in p:  # a class absent from validation keeps 0.5, said so
            assert 0.0 <= p["sensitivity"] <= 1.0 and 0.0 <= p["specificity"] <= 1.0, (c, p)
    return meta


def intervals(obj, path: str = "") -> dict[str, tuple[float, list]]:
    """Every ``K_ci95`` in a metrics.json (nested), with the figure ``K`` beside it: ``{path: (value, [lo, hi])}``."""
    found = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.endswith("_ci95") and k[:-5] in obj:
                found[f"{path}{k[:-5]}"] = (obj[k[:-5]], v)
            elif isinstance(v, (dict, list)):
                found.update(intervals(v, f"{path}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.update(intervals(v, f"{path}{i}."))
    return found


def check_evaluation(out: Path, class_names: list[str], headline: list[str]) -> dict:
    """metrics.json: each headline figure has ``_ci95`` and every interval holds its figure (low <= value <= high;
    an undefined figure has an undefined interval); operating points and calibration (ECE before/after) are there;
    reliability.png and predictions.csv (a probability, a truth and a call column per class) are written."""
    m = json.loads((out / "metrics.json").read_text())
    ivs = intervals(m)
    assert set(headline) <= set(ivs), (headline, sorted(ivs))
    for name, (value, (lo, hi)) in ivs.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
            continue  # e.g. a finding with no positive in some resamples: no interval, never a wrong one
        assert lo - 1e-9 <= value <= hi + 1e-9, (name, value, lo, hi)
    assert m["bootstrap"]["resampling_unit"] == "patient" and m["bootstrap"]["n_resamples"] > 0
    assert set(class_names) <= set(m["operating_points"])
    cal = m["calibration"]
    assert cal["ece_before"] >= 0 and cal["ece_after"] >= 0
    assert (out / "reliability.png").read_bytes()[:8] == PNG
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == m["n"]
    for c in class_names:
        assert all(0.0 <= float(r[f"prob_{c}"]) <= 1.0 for r in rows)
        assert all(r[f"call_{c}"] in ("0", "1") and r[f"true_{c}"] in ("0", "1") for r in rows)
    return m


def check_inference_calls(out: Path, ckpt: Path, class_names: list[str]) -> None:
    """predictions.csv has a probability and a call per class, the call made at model.json's stored threshold."""
    points = json.loads((ckpt / "model.json").read_text())["operating_points"]
    rows = [r for r in csv.DictReader((out / "predictions.csv").open()) if not r["error"]]
    assert rows
    for r in rows:
        for c in class_names:
            p, t = float(r[f"prob_{c}"]), points[c]["threshold"]
            if abs(p - t) <= 5e-7:  # the table keeps 6 decimals: a probability this close may round across it
                continue
            assert int(r[f"call_{c}"]) == int(p >= t), (r, points[c])
