"""``medplugin compare RUN_A RUN_B`` on evaluation run folders: planted and null differences, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medplugin.compare import compare_runs, format_table, prediction_header, read_run
from medplugin.compare_cli import main
from medplugin.errors import BadInputError

FINDINGS = ["Effusion", "Mass"]


def _write_run(folder: Path, files, patients, probs, truth, calls=None, root="/data/test", metrics=None) -> Path:
    """An evaluation run folder as the evaluation writes it: predictions.csv (+ metrics.json)."""
    folder.mkdir(parents=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(prediction_header(FINDINGS, calls is not None, "findings"))
        for i, name in enumerate(files):
            row = [f"{root}/{name}", patients[i], "", *[f"{v:.6f}" for v in probs[i]], *[int(v) for v in truth[i]]]
            row += [int(v) for v in calls[i]] if calls is not None else []
            w.writerow([*row, ""])
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _pair(tmp_path: Path, seed: int, effect_b: float, n_patients: int = 150, tag: str = ""):
    """Two multi-label runs on one test set (2 images per patient); B's scores separate by ``effect_b``."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    files = [f"{i // 2:05d}_{i % 2:03d}.png" for i in range(n)]
    patients = [f"{i // 2:05d}" for i in range(n)]
    truth = (rng.random((n, 2)) < 0.3).astype(int)

    def probs(effect):
        return 1 / (1 + np.exp(-(effect * truth + rng.normal(size=(n, 2)) - 1)))

    pa, pb = probs(1.0), probs(effect_b)
    a = _write_run(tmp_path / f"a{tag}", files, patients, pa, truth, (pa > 0.4).astype(int))
    b = _write_run(tmp_path / f"b{tag}", files, patients, pb, truth, (pb > 0.4).astype(int), root="/mnt/copy/test")
    return a, b


def test_a_planted_difference_is_significant(tmp_path):
    a, b = _pair(tmp_path, seed=0, effect_b=2.0)
    res = compare_runs(a, b, n_resamples=1000, seed=0)
    assert res["resampling_unit"] == "patient" and res["n_images"] == 300 and res["n_patients"] == 150
    mean = res["figures"]["mean_auroc"]
    assert mean["difference"] > 0 and mean["ci95"][0] > 0 and mean["p"] < 0.05
    for f in FINDINGS:
        r = res["figures"][f"{f}_auroc"]
        assert r["p"] < 0.05 and r["delong_p"] < 0.05 and r["delong_z"] > 0
    assert {"Effusion_sensitivity", "Mass_specificity", "Mass_ppv", "Effusion_npv"} <= set(res["figures"])
    table = format_table(res)
    assert table.splitlines()[0] == "| figure | A | B | B - A | 95% CI | p | p (DeLong) |"
    assert "| mean_auroc |" in table


def test_a_null_difference_is_rarely_significant(tmp_path):
    """40 seeded draws of two equally good models (independent noise). Measured: p < 0.05 in 1 of 40 draws for
    the bootstrap of the mean AUROC, in 4 of 40 for DeLong's test of the Effusion AUROC (5% expected)."""
    rejected_boot, rejected_delong = 0, 0
    for seed in range(40):
        a, b = _pair(tmp_path, seed=100 + seed, effect_b=1.0, tag=str(seed))
        res = compare_runs(a, b, n_resamples=500, seed=seed)["figures"]
        rejected_boot += res["mean_auroc"]["p"] < 0.05
        rejected_delong += res["Effusion_auroc"]["delong_p"] < 0.05
    assert rejected_boot <= 6 and rejected_delong <= 6  # about 5% expected; 6 of 40 is 15%


def test_runs_on_different_test_sets_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    files = [f"img{i}.png" for i in range(20)]
    pats = [f"p{i // 2}" for i in range(20)]
    probs, truth = rng.random((20, 2)), (rng.random((20, 2)) < 0.5).astype(int)
    a = _write_run(tmp_path / "a", files, pats, probs, truth)
    other_files = _write_run(tmp_path / "b1", files[:-1] + ["img99.png"], pats, probs, truth)
    only_a = r"not the test set of run A .*1 files only in A \(e\.g\. \['/data/test/img19"
    with pytest.raises(BadInputError, match=only_a):
        compare_runs(a, other_files, n_resamples=10)
    other_patients = _write_run(tmp_path / "b2", files, [f"q{i}" for i in range(20)], probs, truth)
    with pytest.raises(BadInputError, match="20 files belong to other patients"):
        compare_runs(a, other_patients, n_resamples=10)
    flipped = truth.copy()
    flipped[3, 0] = 1 - flipped[3, 0]
    other_labels = _write_run(tmp_path / "b3", files, pats, probs, flipped)
    with pytest.raises(BadInputError, match=r"1 files have other labels \(e\.g\. \['/data/test/img3\.png'\]\)"):
        compare_runs(a, other_labels, n_resamples=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="empty: no predictions.csv"):
        compare_runs(a, tmp_path / "empty", n_resamples=10)


def test_multiclass_runs_read_their_kind_and_kappa(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    truth = np.eye(2, dtype=int)[y]
    p = np.clip(0.5 + 0.3 * (2 * truth - 1) + rng.normal(0, 0.2, (60, 1)) * [1, -1], 0.01, 0.99)
    p = p / p.sum(1, keepdims=True)
    files, pats = [f"f{i}.png" for i in range(60)], [f"p{i}" for i in range(60)]
    a = _write_run(tmp_path / "a", files, pats, p, truth, metrics={"kappa": 0.5})
    b = _write_run(tmp_path / "b", files[::-1], pats[::-1], p[::-1], truth[::-1], metrics={"kappa": 0.4})
    run = read_run(a)
    assert run.kind == "multiclass" and run.kappa
    res = compare_runs(a, b, n_resamples=50)  # B is A's rows in reverse order: aligned, so no difference
    assert {"accuracy", "macro_auroc", "kappa"} <= set(res["figures"])
    assert all(r["difference"] == 0.0 and r["p"] == 1.0 for r in res["figures"].values())


def test_segmentation_runs_compare_per_case_dice(tmp_path):
    for name, dice in (("a", [0.8, 0.7, 0.9, 0.6]), ("b", [0.85, 0.75, 0.95, 0.7])):
        d = tmp_path / name
        d.mkdir()
        rows = [{"file": f"/d/case{i}.nii.gz", "dice": v} for i, v in enumerate(dice)]
        (d / "metrics.json").write_text(json.dumps({"mean_dice": float(np.mean(dice)), "per_exam": rows}))
    res = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=200)
    assert res["kind"] == "segmentation" and res["resampling_unit"] == "image"
    assert res["figures"]["mean_dice"]["difference"] == pytest.approx(0.0625)
    assert res["figures"]["mean_dice"]["ci95"][0] > 0


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    a, b = _pair(tmp_path, seed=3, effect_b=2.0, n_patients=40)
    out = tmp_path / "cmp.json"
    assert main([str(a), str(b), "--bootstrap", "200", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mean_auroc |" in printed and "80 images of 40 patients" in printed
    data = json.loads(out.read_text())
    assert data["difference"] == "B - A" and data["n_resamples"] == 200 and "Mass_auroc" in data["figures"]
    assert main([str(a), str(b), "-o", str(out)]) == 2  # no overwrite without --force
    assert "exists" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "x.json")]) == 2
    assert "no such evaluation run folder" in capsys.readouterr().err
