"""TrainingCheckpoint on tiny ignite engines: what it saves each epoch, and that a new run loads all of it back."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers import BestModelSaver, TrainingCheckpoint
from medplugin.handlers.resume import latest_checkpoint


def _parts(tmp_path, seed: int, resume=False, **kw):
    """A trainer whose step sets known weights (no training), an optimizer with state, a scheduler, a validator."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def step(engine, batch):
        opt.step()  # no gradients: changes nothing, but the scheduler expects it before its own step
        with torch.no_grad():
            net.weight.fill_(float(engine.state.iteration))  # the weights tell the iteration
        opt.state[net.weight]["momentum_buffer"] = torch.full((2, 3), float(engine.state.iteration))  # its state too
        return 0.0

    trainer = Engine(step)
    validator = Engine(lambda e, b: None)
    validator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(acc=0.1 * trainer.state.epoch))
    saver = BestModelSaver(net, str(tmp_path / "models"), key_metric="acc")
    saver.attach(validator)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(e):
        validator.run([0], max_epochs=1)
        validator.state.best_metric, validator.state.best_metric_epoch = saver.best, e.state.epoch
        sched.step()

    ckpt = TrainingCheckpoint(str(tmp_path), net, opt, sched, validator=validator, resume=resume, **kw)
    ckpt.attach(trainer)
    return trainer, net, opt, sched, validator, saver, ckpt


def test_saves_every_part_each_epoch_with_weights_only_loading(tmp_path):
    trainer, net, opt, sched, validator, saver, ckpt = _parts(tmp_path, seed=0)
    trainer.run([0, 1, 2], max_epochs=2)
    path = latest_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoints" / "training_checkpoint_6.pt"  # named by iteration; n_saved=1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [path.name]
    state = torch.load(path, weights_only=True)
    assert set(state) == {"trainer", "network", "optimizer", "lr_scheduler", "validator_best",
                          "validator_BestModelSaver"}
    assert dict(state["trainer"]) == {"epoch_length": 3, "iteration": 6, "max_epochs": 2}
    assert float(state["network"]["weight"][0, 0]) == 6
    assert state["lr_scheduler"]["last_epoch"] == 2
    assert state["validator_BestModelSaver"]["best"] == pytest.approx(0.2)
    assert state["validator_best"] == {"best_metric": pytest.approx(0.2), "best_metric_epoch": 2}


def test_a_resumed_run_loads_everything_and_goes_on(tmp_path):
    _parts(tmp_path, seed=0)[0].run([0, 1, 2], max_epochs=2)
    trainer, net, opt, sched, validator, saver, ckpt = _parts(tmp_path, seed=1, resume="true")
    loaded = {}
    trainer.add_event_handler(Events.STARTED, lambda e: loaded.update(
        epoch=e.state.epoch, weight=float(net.weight[0, 0].detach()), best=saver.best, lr=opt.param_groups[0]["lr"],
        marker=float(opt.state[net.weight]["momentum_buffer"][0, 0]), best_metric=validator.state.best_metric))
    trainer.run([0, 1, 2], max_epochs=3)
    assert ckpt.loaded_from == tmp_path / "checkpoints" / "training_checkpoint_6.pt"
    assert loaded == {"epoch": 2, "weight": 6.0, "best": pytest.approx(0.2), "lr": pytest.approx(0.025),
                      "marker": 6.0, "best_metric": pytest.approx(0.2)}
    assert (trainer.state.epoch, trainer.state.iteration) == (3, 9)  # one more epoch, as num_epochs says
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["training_checkpoint_9.pt"]


def test_every_n_epochs_and_n_saved(tmp_path):
    trainer = _parts(tmp_path, seed=0, n_saved=2, every_n_epochs=2)[0]
    trainer.run([0, 1], max_epochs=5)
    # epochs 2 and 4, and the last one (5); the newest two kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "training_checkpoint_10.pt", "training_checkpoint_8.pt"]


def test_arguments_and_missing_checkpoint_are_named(tmp_path):
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="n_saved and every_n_epochs must be >= 1, got 0 and 1"):
        TrainingCheckpoint(str(tmp_path), net, opt, n_saved=0)
    trainer = _parts(tmp_path, seed=0, resume=True)[0]
    with pytest.raises(BadInputError, match="resume was asked for but this run folder has no checkpoint"):
        trainer.run([0], max_epochs=1)
