"""The epoch metrics gathered over 2 gloo processes with uneven validation shards (MONAI's
``DistributedSampler(even_divisible=False)``, as the bundles' multi_gpu configs validate) give exactly the
single-process result, each sample counted once; a rank without samples neither hangs nor fails."""

from __future__ import annotations

import math

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DistributedSampler, MetaTensor

from medplugin.metrics import ClassificationMetrics, GradingMetrics, MultiLabelAUROC
from medplugin.metrics.base import ReportMetric

GRADES = ["none", "mild", "moderate", "severe", "proliferative"]
FINDINGS = ["A", "B", "C"]


class _Gathered(ReportMetric):
    """Reports the gathered tensors themselves, to see which samples reached the report."""

    def report(self, probs, labels):
        return {"probs": probs, "labels": labels}

    def flatten(self, report, prefix):
        return {f"gathered_{k}": v for k, v in report.items()}


def _data(n: int, seed: int = 0):
    """``n`` samples: 5-grade probabilities (column 0 = the sample's id / 1000, so each sample is recognisable),
    grades, and 3 multi-label columns (C without positives)."""
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + 1.5 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = np.arange(n) / 1000.0
    probs[:, 0] = ids
    findings = (rng.random((n, 3)) < [0.4, 0.2, 0.0]).astype(np.float32)
    scores = np.round(np.clip(0.5 * findings + rng.random((n, 3)) * 0.6, 0, 1), 2)  # ties
    return probs.astype(np.float32), grades, scores.astype(np.float32), findings


def _metrics() -> dict:
    grade, multilabel = (lambda o: (o["pred"], o["label"])), (lambda o: (o["ml_pred"], o["ml_label"]))
    return {
        "val_kappa": GradingMetrics(GRADES, task="grade", key="kappa", output_transform=grade),
        "val": GradingMetrics(GRADES, task="grade", prefix="val_", output_transform=grade),
        "cls": ClassificationMetrics(GRADES, prefix="cls_", output_transform=grade),
        "val_mean_auroc": MultiLabelAUROC(FINDINGS, output_transform=multilabel),
        "ml": MultiLabelAUROC(FINDINGS, key=None, prefix="ml_", output_transform=multilabel),
        "gathered": _Gathered(5, key=None, keys=(), prefix="", output_transform=grade),
    }


def _evaluate(indices, data, batch_size=4) -> dict:
    """Run an evaluator-like engine over ``indices``: decollated batches, MetaTensor predictions, one-hot grades
    for the grading metrics, 0/1 rows for the multi-label ones (an empty shard is one empty batch)."""
    probs, grades, scores, findings = data
    batches = []
    for i in range(0, max(len(indices), 1), batch_size):
        idx = indices[i:i + batch_size]
        batches.append({"pred": [MetaTensor(torch.from_numpy(probs[j])) for j in idx],
                        "label": [torch.nn.functional.one_hot(torch.tensor(int(grades[j])), 5) for j in idx],
                        "ml_pred": [MetaTensor(torch.from_numpy(scores[j])) for j in idx],
                        "ml_label": [torch.from_numpy(findings[j]) for j in idx]})
    engine = Engine(lambda e, b: b)
    for name, m in _metrics().items():
        m.attach(engine, name)
    return dict(engine.run(batches).metrics)


def _worker(local_rank: int, sizes: list[int], out_dir: str) -> None:
    for n in sizes:
        data = _data(n)
        if n >= idist.get_world_size():
            shard = list(DistributedSampler(list(range(n)), even_divisible=False, shuffle=False))
        else:  # MONAI's sampler refuses fewer samples than ranks; its shard would be this one
            shard = list(range(n))[idist.get_rank()::idist.get_world_size()]
        res = _evaluate(shard, data)
        res["shard"] = shard
        torch.save(res, f"{out_dir}/n{n}_rank{idist.get_rank()}.pt")


def _same(a, b) -> bool:
    """Exactly equal, NaN equal to NaN, dicts (the flat dicts ignite also keeps whole) compared entry by entry."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Each rank's results for 23 samples (shards of 12 and 11), 1 sample (rank 1 empty) and 0 samples (an empty
    rank cannot come from MONAI's sampler, but the metric must not hang or fail if another sampler makes one)."""
    out = tmp_path_factory.mktemp("ddp")
    with idist.Parallel(backend="gloo", nproc_per_node=2, init_method=f"file://{out}/pg") as parallel:
        parallel.run(_worker, [23, 1, 0], str(out))
    return {(n, r): torch.load(out / f"n{n}_rank{r}.pt", weights_only=False) for n in (23, 1, 0) for r in (0, 1)}


@pytest.mark.parametrize("n", [23, 1, 0])
def test_uneven_shards_give_the_single_process_result(two_ranks, n):
    single = _evaluate(list(range(n)), _data(n))
    r0, r1 = two_ranks[(n, 0)], two_ranks[(n, 1)]
    assert len(r0.pop("shard")) == (n + 1) // 2 and len(r1.pop("shard")) == n // 2  # uneven shards
    for got in (r0, r1):
        probs, labels = got.pop("gathered_probs"), got.pop("gathered_labels")
        ids = np.round(probs[:, 0] * 1000).astype(int)
        assert sorted(ids.tolist()) == list(range(n))  # every sample exactly once, no padding, no duplicate
        np.testing.assert_array_equal(labels, _data(n)[1][ids])  # labels travel with their samples
        for k in ("gathered", "gathered_probs", "gathered_labels"):
            got.pop(k, None), single.pop(k, None)
        assert set(got) == set(single)
        for k in got:
            assert _same(got[k], single[k]), f"n={n} {k}: {got[k]} != {single[k]}"


def test_the_results_are_real_figures(two_ranks):
    """Guard against a vacuous comparison: the 23-sample results are numbers where defined, NaN where not."""
    r0 = two_ranks[(23, 0)]
    assert -1.0 <= r0["val_kappa"] <= 1.0 and 0.0 < r0["val_mean_auroc"] <= 1.0
    assert math.isnan(r0["ml_C_auroc"]) and not math.isnan(r0["ml_A_auroc"])
    assert math.isnan(two_ranks[(0, 0)]["val_accuracy"]) and math.isnan(two_ranks[(1, 1)]["val_auc"])
