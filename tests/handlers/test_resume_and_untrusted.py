"""TrainingCheckpoint (resume after a crash), output-folder guards, and weights files that would run code."""

from __future__ import annotations

import pathlib

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers import BestModelSaver, ModelLoader, TrainingCheckpoint
from medplugin.handlers.resume import latest_checkpoint, resume_requested
from medplugin.utils import check_output_dir, run_dir


class _Touch:
    """Unpickling this creates a marker file: what a malicious checkpoint would do (here, harmlessly)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _evil_file(path: pathlib.Path, marker: pathlib.Path, wrap=lambda x: x) -> pathlib.Path:
    torch.save(wrap({"fc.weight": torch.zeros(2, 2), "payload": _Touch(marker)}), path)  # zip format, as torch writes
    return path


def _training(save_dir, epochs: int, resume=False, fail_at: int | None = None, seed: int = 0):
    """A tiny real training (linear model, SGD, step LR, validation with BestModelSaver) in ignite engines."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)
    data = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]

    def step(engine, batch):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    validator = Engine(lambda e, b: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(e):  # a known validation score per epoch: the best is 0.9, at epoch 4
        e.state.metrics["acc"] = [0.5, 0.7, 0.6, 0.9, 0.8, 0.85][trainer.state.epoch - 1]

    saver = BestModelSaver(net, str(save_dir / "models"), key_metric="acc")
    saver.attach(validator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=1))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    if fail_at is not None:
        @trainer.on(Events.ITERATION_COMPLETED)
        def _crash(e):
            if e.state.iteration == fail_at:
                raise KeyboardInterrupt("simulated crash")
    ckpt = TrainingCheckpoint(str(save_dir), net, opt, sched, validator=validator, resume=resume)
    ckpt.attach(trainer)
    return trainer, net, opt, sched, saver, ckpt, data, epochs


def _run(t):
    trainer, net, opt, sched, saver, ckpt, data, epochs = t
    trainer.run(data, max_epochs=epochs)
    return t


def test_resumed_training_equals_an_uninterrupted_one(tmp_path):
    full = _run(_training(tmp_path / "a", epochs=5))
    crashed = _training(tmp_path / "b", epochs=5, fail_at=4 * 2 + 2)  # mid-epoch 3
    with pytest.raises(KeyboardInterrupt):
        _run(crashed)
    assert latest_checkpoint(tmp_path / "b").name == "training_checkpoint_8.pt"  # after epoch 2
    resumed = _run(_training(tmp_path / "b", epochs=5, resume=True, seed=123))  # other init: all must be loaded
    f_tr, f_net, f_opt, f_sched, f_saver = full[:5]
    r_tr, r_net, r_opt, r_sched, r_saver, r_ckpt = resumed[:6]
    assert r_ckpt.loaded_from.name == "training_checkpoint_8.pt"
    assert (r_tr.state.epoch, r_tr.state.iteration) == (f_tr.state.epoch, f_tr.state.iteration) == (5, 20)
    assert r_sched.get_last_lr() == pytest.approx(f_sched.get_last_lr())
    for a, b in zip(f_net.parameters(), r_net.parameters()):
        torch.testing.assert_close(a, b)  # same data order here, so the same weights
    assert r_saver.best == f_saver.best == 0.9
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["training_checkpoint_20.pt"]


def test_resume_asked_without_checkpoint_is_an_error(tmp_path):
    t = _training(tmp_path, epochs=1, resume="true")
    with pytest.raises(BadInputError, match="has no checkpoint"):
        _run(t)


def test_checkpoint_beyond_num_epochs_is_named(tmp_path):
    _run(_training(tmp_path, epochs=3))
    with pytest.raises(BadInputError, match="beyond num_epochs 2; raise --num_epochs"):
        _run(_training(tmp_path, epochs=2, resume=True))


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("runs/train_1", True), (False, False),
                                             (None, False), ("false", False), ("", False), ("no", False)])
def test_resume_values(value, expected):
    assert resume_requested(value) is expected


def test_run_dir_new_latest_and_named(tmp_path):
    base = tmp_path / "runs"
    new = run_dir(base, "train", False)
    assert pathlib.Path(new).parent == base and not pathlib.Path(new).exists()
    with pytest.raises(BadInputError, match="no earlier 'train_\\*' run with a checkpoint"):
        run_dir(base, "train", True)
    for name in ("train_20250101_000000", "train_20250102_000000", "train_20250103_000000"):
        (base / name).mkdir(parents=True)
    for name in ("train_20250101_000000", "train_20250102_000000"):  # the newest folder has no checkpoint
        (base / name / "checkpoints").mkdir()
        (base / name / "checkpoints" / "training_checkpoint_4.pt").write_bytes(b"x")
    assert run_dir(base, "train", "true") == str(base / "train_20250102_000000")
    assert run_dir(base, "train", str(base / "train_20250101_000000")) == str(base / "train_20250101_000000")
    with pytest.raises(BadInputError, match="no such run folder"):
        run_dir(base, "train", str(base / "nope"))


def test_output_dir_never_over_earlier_outputs_or_inside_the_input(tmp_path):
    data = tmp_path / "dataset"
    (data / "train").mkdir(parents=True)
    assert check_output_dir(tmp_path / "out", [data]) == str(tmp_path / "out")
    for inside in (data, data / "train" / "runs"):
        with pytest.raises(BadInputError, match="is inside the input folder"):
            check_output_dir(inside, [data])
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"already holds the outputs of an earlier run \(metrics.json\)"):
        check_output_dir(earlier, [data])
    assert check_output_dir(earlier, [data], resume=True) == str(earlier)  # a training resuming there


# ---- untrusted weights ---------------------------------------------------------------------------------------

def test_model_loader_refuses_a_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = _evil_file(tmp_path / "model.pt", marker)
    with pytest.raises(BadInputError, match="refused to load: the file holds pickled Python objects") as e:
        ModelLoader(torch.nn.Linear(2, 2), str(path))()
    assert e.value.path == str(path)
    assert not marker.exists()


def test_pretrained_path_that_would_run_code_is_refused(tmp_path):
    from medplugin.networks import classifier

    marker = tmp_path / "pwned"
    path = _evil_file(tmp_path / "resnet18.pth", marker)
    with pytest.raises(BadInputError, match="refused to load"):
        classifier("resnet18", in_channels=1, num_classes=2, pretrained_path=str(path))
    assert not marker.exists()


def test_resume_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    _evil_file(tmp_path / "checkpoints" / "training_checkpoint_4.pt", marker)
    with pytest.raises(BadInputError, match="cannot read this checkpoint safely"):
        _run(_training(tmp_path, epochs=2, resume=True))
    assert not marker.exists()


@pytest.mark.parametrize("greater_or_equal, saved_epoch", [(True, 3), (False, 1)])
def test_best_model_on_a_saturated_metric_is_the_latest_by_default(tmp_path, greater_or_equal, saved_epoch):
    """AUC 1.0 from epoch 1 on (a small validation set): the default keeps the longest-trained equal model."""
    import json

    net = torch.nn.Linear(2, 2)
    validator = Engine(lambda e, b: None)
    epoch = {"n": 0}

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        epoch["n"] += 1
        torch.nn.init.constant_(net.weight, float(epoch["n"]))  # the weights tell which epoch was saved
        e.state.metrics["auc"] = [1.0, 1.0, 1.0, 0.5][epoch["n"] - 1]

    BestModelSaver(net, str(tmp_path), key_metric="auc", greater_or_equal=greater_or_equal).attach(validator)
    for _ in range(4):
        validator.run([0], max_epochs=1)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(state["weight"][0, 0]) == saved_epoch  # a lower metric (epoch 4) never replaces it
    assert json.loads((tmp_path / "model.json").read_text())["auc"] == 1.0


def test_undefined_key_metric_still_leaves_a_model_and_never_replaces_a_defined_one(tmp_path, caplog):
    """AUC is NaN on a one-class validation split (MONAI Label's small splits): the run still saves a model."""
    import json
    import logging

    net = torch.nn.Linear(2, 2)
    validator = Engine(lambda e, b: None)
    epoch = {"n": 0}
    values = [float("nan"), float("nan"), 0.7, float("nan"), 0.6]

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        epoch["n"] += 1
        torch.nn.init.constant_(net.weight, float(epoch["n"]))
        e.state.metrics["auc"] = values[epoch["n"] - 1]

    BestModelSaver(net, str(tmp_path), key_metric="auc").attach(validator)
    saved = []
    with caplog.at_level(logging.WARNING, logger="medplugin.handlers.checkpoint"):
        for _ in values:
            validator.run([0], max_epochs=1)
            saved.append(float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0]))
            if len(saved) == 1:
                assert json.loads((tmp_path / "model.json").read_text())["auc"] is None
    assert saved == [1, 2, 3, 3, 3]  # the latest while undefined, then the defined best
    assert json.loads((tmp_path / "model.json").read_text())["auc"] == 0.7
    assert "auc is undefined (NaN) at epoch" in caplog.text and "keeping the latest model" in caplog.text


def test_a_checkpoint_is_on_disk_while_the_next_one_is_written(tmp_path, monkeypatch):
    """ignite's Checkpoint removes the oldest file before it writes the next: with one kept, a kill or Ctrl-C during
    that write found no checkpoint to resume from. Each write here looks at the folder as it starts."""
    from ignite.handlers import DiskSaver

    seen: list[list[str]] = []
    write = DiskSaver.__call__

    def watched(self, checkpoint, filename, metadata=None):
        seen.append(sorted(p.name for p in (tmp_path / "checkpoints").glob("training_checkpoint_*.pt")))
        return write(self, checkpoint, filename, metadata)

    monkeypatch.setattr(DiskSaver, "__call__", watched)
    _run(_training(tmp_path, epochs=3))
    assert seen == [[], ["training_checkpoint_4.pt"], ["training_checkpoint_8.pt"]]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["training_checkpoint_12.pt"]  # still one kept
