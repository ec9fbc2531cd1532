"""The patient split recorded in model.json and checked by ModelLoader, and evaluation reports over several ranks
(``gather_samples``), in process: real ignite engines, real gloo process groups, no bundle subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers import ClassificationReportWriter, ModelLoader, patient_digest
from medplugin.handlers._engine import gather_samples

DATALIST = {"training": [{"image": "/d/a1.png", "patient_id": "a"}, {"image": "/d/b1.png", "patient_id": "b"},
                         {"image": "/d/a2.png", "patient_id": "a"}],
            "validation": [{"image": "/d/c1.png", "patient_id": "c"}],
            "test": [{"image": "/d/z1.png", "patient_id": "z"}]}


def test_patient_digest_is_the_set_of_training_and_validation_patients():
    d = patient_digest(DATALIST)
    assert len(d) == 16 and int(d, 16) >= 0
    moved = {k: [dict(e, image="/elsewhere/" + Path(e["image"]).name) for e in v][::-1] for k, v in DATALIST.items()}
    assert patient_digest(moved) == d  # order, duplicates and the data's location do not matter
    swapped = {"training": DATALIST["training"][:2], "validation": [DATALIST["training"][2], *DATALIST["validation"]]}
    assert patient_digest(swapped) == d  # only the union: validation carved differently from the same patients
    assert patient_digest({**DATALIST, "test": []}) == d  # the test part is not part of it
    assert patient_digest({**DATALIST, "validation": [{"image": "/d/z1.png", "patient_id": "z"}]}) != d
    no_ids = {"training": [{"image": "/x/1.png"}], "validation": [{"image": "/y/2.png"}]}
    assert patient_digest(no_ids) == patient_digest({"training": [{"image": "/q/2.png"}, {"image": "/q/1.png"}]})


def _model(tmp_path: Path, split: dict) -> tuple[torch.nn.Module, Path]:
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    (tmp_path / "model.json").write_text(json.dumps({"arch": "linear", "split": split}))
    return net, path


def test_model_loader_refuses_another_patient_split_and_names_the_overrides(tmp_path):
    trained = {"dataset_dir": "/data/nih", "val_fraction": 0.2, "split_seed": 3, "views": ["PA"], "patients": "00aa"}
    net, path = _model(tmp_path, trained)
    # other settings giving the same patients (e.g. an official test list): accepted
    ModelLoader(net, str(path), {"arch": "linear", "split": {**trained, "split_seed": 0, "dataset_dir": "/mnt/nih"}})()
    other = {"dataset_dir": "/data/nih", "val_fraction": 0.1, "split_seed": 0, "patients": "11bb"}
    with pytest.raises(BadInputError, match=r"another patient split .*run with --val_fraction 0\.2 --split_seed 3$"):
        ModelLoader(net, str(path), {"arch": "linear", "split": other})()
    with pytest.raises(BadInputError, match=r"""run with --views '\["PA"\]'$"""):  # a list, quoted for the shell
        ModelLoader(net, str(path), {"split": {**trained, "views": ["PA", "AP"], "patients": "11bb"}})()
    with pytest.raises(BadInputError, match=r"although its split settings agree.*--datalist <the training run's"):
        ModelLoader(net, str(path), {"arch": "linear", "split": {**trained, "patients": "11bb"}})()
    # a model.json from before splits were recorded, or a run that records none (inference): nothing to compare
    ModelLoader(net, str(path), {"arch": "linear"})()
    (tmp_path / "model.json").write_text(json.dumps({"arch": "linear"}))
    ModelLoader(net, str(path), {"arch": "linear", "split": other})()


# ---- reports over ranks ---------------------------------------------------------------------------------------

N_ITEMS = 7
CLASSES = ["a", "b", "c"]


def _items() -> list[dict]:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=N_ITEMS).astype(np.float32)
    return [{"pred": torch.from_numpy(p), "label": int(i % 3), "path": f"/d/img{i}.png", "index": i}
            for i, p in enumerate(probs)]


def _evaluate(out: Path, even_divisible: bool) -> tuple[list, list]:
    """An evaluator-like engine over the items (batches of 2) with ClassificationReportWriter; returns what
    gather_samples gives this rank for the indices and the file names it saw."""
    from monai.data import DataLoader, DistributedSampler

    items = _items()
    distributed = torch.distributed.is_initialized()
    sampler = DistributedSampler(items, shuffle=False, even_divisible=even_divisible) if distributed else None
    loader = DataLoader(items, batch_size=2, sampler=sampler, num_workers=0)

    def step(engine, batch):
        return [{"pred": p} for p in batch["pred"]]  # decollated, as MONAI's evaluator leaves it

    engine = Engine(step)
    writer = ClassificationReportWriter(str(out), CLASSES)
    writer.attach(engine)
    seen: list[int] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.extend(int(i) for i in e.state.batch["index"]))
    engine.run(loader)
    return list(gather_samples(engine, seen, [f"/d/img{i}.png" for i in seen]))


def _rank(rank: int, world: int, init_file: str, out: str, even_divisible: bool) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        got = _evaluate(Path(out), even_divisible)
        Path(out, f"gathered_{rank}.json").write_text(json.dumps(got))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # starts two processes
@pytest.mark.parametrize("even_divisible", [False, True])
def test_two_ranks_write_the_one_process_report(tmp_path, even_divisible):
    """Two gloo ranks (4 + 3 items, or 4 + 4 with the sampler's padding): every rank gathers all 7 samples in
    dataset order, once each, and rank 0 writes the metrics.json one process writes."""
    import torch.multiprocessing as mp

    one, two = tmp_path / "one", tmp_path / "two"
    assert _evaluate(one, even_divisible)[0] == list(range(N_ITEMS))  # not distributed: as seen
    two.mkdir()
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(two), even_divisible), nprocs=2, join=True)
    for rank in (0, 1):
        indices, paths = json.loads((two / f"gathered_{rank}.json").read_text())
        assert indices == list(range(N_ITEMS)) and paths == [f"/d/img{i}.png" for i in range(N_ITEMS)]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["n"] == N_ITEMS and m2 == m1
    assert sorted(os.listdir(two)) == ["confusion_matrix.png", "gathered_0.json", "gathered_1.json", "metrics.json",
                                       "roc.png"]
