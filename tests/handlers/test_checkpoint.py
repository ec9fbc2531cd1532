"""BestModelSaver and ModelLoader on tiny ignite engines (no training: the weights are set per epoch)."""

from __future__ import annotations

import datetime
import json
import logging
import os

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers import BestModelSaver, ModelLoader

META = {"arch": "resnet18", "image_size": 64, "in_channels": 1, "class_names": ["normal", "pneumonia"]}


def _validator(net: torch.nn.Module, values: list[float]) -> Engine:
    """A validation engine whose epoch ``n`` sets every weight to ``n`` and reports ``values[n - 1]``."""
    engine = Engine(lambda e, b: None)
    count = {"n": 0}

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        count["n"] += 1
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(count["n"]))
        e.state.metrics["val_auc"] = values[count["n"] - 1]

    return engine


def _saved_epoch(path) -> float:
    return float(torch.load(path, weights_only=True)["weight"][0, 0])


def test_keeps_the_best_model_and_sets_the_earlier_one_aside(tmp_path):
    earlier = torch.nn.Linear(3, 2)
    torch.save(earlier.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({"arch": "old"}))
    stamp = datetime.datetime.fromtimestamp((tmp_path / "model.pt").stat().st_mtime).strftime("%Y%m%d_%H%M%S")

    net = torch.nn.Linear(3, 2)
    validator = _validator(net, [0.6, 0.8, 0.7, 0.8])
    saver = BestModelSaver(net, str(tmp_path), key_metric="val_auc", model_meta=META)
    saver.attach(validator)
    for _ in range(4):
        validator.run([0], max_epochs=1)

    assert _saved_epoch(tmp_path / "model.pt") == 4  # 0.8 again at epoch 4: the longer-trained model
    meta = json.loads((tmp_path / "model.json").read_text())
    assert {k: meta[k] for k in META} == META and meta["val_auc"] == 0.8
    assert datetime.datetime.fromisoformat(meta["saved"])  # when it was saved
    kept = tmp_path / f"model.{stamp}.pt"
    state = torch.load(kept, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in earlier.state_dict().items())
    assert json.loads(kept.with_suffix(".json").read_text()) == {"arch": "old"}
    assert sorted(os.listdir(tmp_path)) == sorted(["model.pt", "model.json", kept.name, f"model.{stamp}.json"])
    assert saver.state_dict() == {"best": 0.8, "checked_previous": True}


def test_first_equal_model_kept_without_greater_or_equal_and_state_round_trip(tmp_path):
    net = torch.nn.DataParallel(torch.nn.Linear(3, 2))  # a wrapped network is saved without "module."
    validator = _validator(net, [0.7, 0.7, 0.5])
    saver = BestModelSaver(net, str(tmp_path), key_metric="val_auc", greater_or_equal=False)
    saver.attach(validator)
    for _ in range(3):
        validator.run([0], max_epochs=1)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}
    assert _saved_epoch(tmp_path / "model.pt") == 1
    resumed = BestModelSaver(net, str(tmp_path), key_metric="val_auc")
    resumed.load_state_dict(saver.state_dict())
    assert resumed.best == 0.7 and resumed.state_dict() == saver.state_dict()


def test_nan_never_replaces_a_defined_metric(tmp_path, caplog):
    net = torch.nn.Linear(3, 2)
    validator = _validator(net, [float("nan"), 0.6, float("nan")])
    BestModelSaver(net, str(tmp_path), key_metric="val_auc").attach(validator)
    with caplog.at_level(logging.WARNING, logger="medplugin.handlers.checkpoint"):
        validator.run([0], max_epochs=1)
        assert _saved_epoch(tmp_path / "model.pt") == 1  # no defined value yet: the latest model is kept
        assert json.loads((tmp_path / "model.json").read_text())["val_auc"] is None
        assert "keeping the latest model until it is defined" in caplog.text
        caplog.clear()
        validator.run([0], max_epochs=1)
        validator.run([0], max_epochs=1)
    assert _saved_epoch(tmp_path / "model.pt") == 2
    assert json.loads((tmp_path / "model.json").read_text())["val_auc"] == 0.6
    assert "val_auc is undefined (NaN) at epoch 1" in caplog.text and "keeping the latest" not in caplog.text


def test_missing_key_metric_is_named():
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_acc=0.5))
    BestModelSaver(torch.nn.Linear(1, 1), "unused", key_metric="val_auc").attach(engine)
    with pytest.raises(KeyError, match=r"key metric 'val_auc' not in \['val_acc'\]"):
        engine.run([0], max_epochs=1)


def _saved_model(tmp_path, meta=META) -> tuple[torch.nn.Module, str]:
    trained = torch.nn.Linear(3, 2)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return trained, str(tmp_path / "model.pt")


def test_model_loader_fills_the_network_when_the_engine_starts(tmp_path):
    trained, path = _saved_model(tmp_path)
    net = torch.nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    expected = {"arch": "resnet18", "image_size": 64, "class_names": ("normal", "pneumonia"), "not_recorded": 1}
    ModelLoader(net, path, expected=expected).attach(engine)
    assert not torch.equal(net.weight, trained.weight)
    engine.run([0], max_epochs=1)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)


def test_model_loader_names_the_override_on_a_mismatch(tmp_path):
    _, path = _saved_model(tmp_path)
    engine = Engine(lambda e, b: None)
    ModelLoader(torch.nn.Linear(3, 2), path, expected={"image_size": 224, "arch": "resnet18"}).attach(engine)
    with pytest.raises(BadInputError) as e:
        engine.run([0], max_epochs=1)
    assert str(e.value) == (f"{path}: the model was trained with other settings (image_size: model 64 vs run 224); "
                            "run with --image_size 64")
    two = ModelLoader(torch.nn.Linear(3, 2), path, expected={"image_size": 224, "class_names": ["a", "b"]})
    # a list value is shell-quoted, so the line runs as printed
    with pytest.raises(BadInputError, match=r"run with --image_size 64 --class_names '\[\"normal\", \"pneumonia\"\]'$"):
        two()


def test_model_loader_missing_file_and_wrong_network(tmp_path):
    with pytest.raises(BadInputError, match=r"model\.pt: no trained model here: train the bundle first, or set --ckpt"):
        ModelLoader(torch.nn.Linear(3, 2), str(tmp_path / "model.pt"))()
    _, path = _saved_model(tmp_path, meta={})
    with pytest.raises(BadInputError, match=r"model\.pt: weights do not fit this network \(Error\(s\) in loading"):
        ModelLoader(torch.nn.Linear(4, 2), path)()


def test_min_mode_keeps_the_lowest_loss_and_resumes_it(tmp_path, caplog):
    net = torch.nn.Linear(3, 2)
    validator = _validator(net, [0.5, 0.3, 0.4, 0.3, 0.35])
    saver = BestModelSaver(net, str(tmp_path), key_metric="val_auc", model_meta=META, mode="min")
    saver.attach(validator)
    with caplog.at_level(logging.INFO, logger="medplugin.handlers.checkpoint"):
        for _ in range(5):
            validator.run([0], max_epochs=1)
    assert _saved_epoch(tmp_path / "model.pt") == 4  # 0.3 again at epoch 4: the longer-trained model
    assert json.loads((tmp_path / "model.json").read_text())["val_auc"] == 0.3
    assert "(val_auc = 0.3000, the lowest so far)" in caplog.text
    assert saver.state_dict() == {"best": 0.3, "checked_previous": True}
    first = BestModelSaver(net, str(tmp_path / "first"), key_metric="val_auc", mode="min", greater_or_equal=False)
    resumed = BestModelSaver(net, str(tmp_path / "first"), key_metric="val_auc", mode="min")
    later = _validator(net, [0.5, 0.3, 0.4, 0.3])
    first.attach(later)
    for _ in range(4):
        later.run([0], max_epochs=1)
    assert _saved_epoch(tmp_path / "first" / "model.pt") == 2  # ties keep the first without greater_or_equal
    resumed.load_state_dict(first.state_dict())
    assert resumed.best == 0.3


def test_min_mode_takes_the_first_defined_loss_after_nan_and_refuses_unknown_modes(tmp_path):
    net = torch.nn.Linear(3, 2)
    validator = _validator(net, [float("nan"), 0.9, float("nan"), 1.2])
    BestModelSaver(net, str(tmp_path), key_metric="val_auc", mode="min").attach(validator)
    for _ in range(4):
        validator.run([0], max_epochs=1)
    assert _saved_epoch(tmp_path / "model.pt") == 2
    with pytest.raises(ValueError, match=r"mode must be 'max' \(higher val_loss is better\) or 'min' \(lower is "
                                         r"better\), got 'lowest'"):
        BestModelSaver(net, str(tmp_path), key_metric="val_loss", mode="lowest")


def test_the_lowest_ignite_validation_loss_chooses_the_model(tmp_path):
    """A real ``ignite.metrics.Loss`` (BCE with logits, as the chest bundle's val_loss) on a tiny validation engine:
    the saver keeps the weights of the epoch whose loss, computed here independently, is lowest."""
    from ignite.metrics import Loss

    torch.manual_seed(0)
    x, y = torch.randn(10, 3), (torch.rand(10, 2) > 0.5).float()
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]  # uneven batches: the loss is averaged per sample, not per batch
    net = torch.nn.Linear(3, 2)
    weights = [torch.randn(2, 3) for _ in range(4)]
    validator = Engine(lambda e, b: (net(b[0]), b[1]))

    @validator.on(Events.EPOCH_STARTED)
    def _set(e):
        with torch.no_grad():
            net.weight.copy_(weights[e.state.epoch - 1])

    Loss(torch.nn.BCEWithLogitsLoss()).attach(validator, "val_loss")
    saver = BestModelSaver(net, str(tmp_path), key_metric="val_loss", mode="min")
    saver.attach(validator)
    validator.run(batches, max_epochs=len(weights))
    with torch.no_grad():
        losses = [float(torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + net.bias, y)) for w in weights]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], weights[best])
    assert json.loads((tmp_path / "model.json").read_text())["val_loss"] == pytest.approx(losses[best], rel=1e-6)


def test_the_log_names_the_epoch_the_file_holds_after_a_tie(tmp_path, caplog):
    """MONAI logs "best value 1.0 at epoch 2" (the first epoch of a tie); model.pt is epoch 4's: the saver says so."""
    net = torch.nn.Linear(3, 2)
    validator = _validator(net, [0.5, 1.0, 0.9, 1.0])
    BestModelSaver(net, str(tmp_path), key_metric="val_auc", model_meta=META).attach(validator)
    with caplog.at_level(logging.INFO, logger="medplugin.handlers.checkpoint"):
        validator.run([0], max_epochs=4)  # state.epoch 1..4, as a trainer's validation sets it
    assert _saved_epoch(tmp_path / "model.pt") == 4
    saved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saved ")]
    assert saved[1] == f"saved {tmp_path / 'model.pt'}, the network of epoch 2 (val_auc = 1.0000, the highest so far)"
    assert saved[-1] == (f"saved {tmp_path / 'model.pt'}, the network of epoch 4 (val_auc = 1.0000, the highest so "
                         "far); equal to an earlier epoch's value: the file now holds this later epoch")
