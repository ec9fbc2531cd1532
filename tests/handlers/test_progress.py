"""ProgressBar: ignite's tqdm bar attached from a bundle config, showing the training loss."""

from __future__ import annotations

from ignite.engine import Engine
from monai.handlers import from_engine

from medplugin.handlers import ProgressBar


def test_shows_the_loss_from_the_output_transform(capsys):
    engine = Engine(lambda e, b: [{"loss": 0.25 * b}])
    ProgressBar(output_transform=from_engine(["loss"], first=True)).attach(engine)
    engine.run([1, 2, 3], max_epochs=2)
    err = capsys.readouterr().err
    assert "Epoch [2/2]" in err and "3/3" in err
    assert "loss=0.75" in err  # the last iteration's loss, as the config's output_transform gives it


def test_without_transform_only_the_progress_is_shown(capsys):
    engine = Engine(lambda e, b: [{"loss": 0.5}])
    ProgressBar().attach(engine)
    engine.run([1, 2], max_epochs=1)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss" not in err


def _last_line(err: str) -> str:
    return err.replace("\n", "\r").rstrip("\r").split("\r")[-1]


def test_a_bar_that_does_not_persist_is_cleared(capsys):
    for persist in (True, False):
        engine = Engine(lambda e, b: None)
        ProgressBar(persist=persist).attach(engine)
        engine.run([1, 2], max_epochs=1)
        last = _last_line(capsys.readouterr().err)
        assert ("2/2" in last) if persist else (last.strip() == "" and len(last) > 10)  # blanked out


def test_inference_counts_files_not_batches(capsys):
    """31 files at batch 4: the bar counts 31 files (its rate in files/s), not 8 batches."""
    import torch
    from torch.utils.data import DataLoader

    data = [{"image": torch.zeros(1, 2, 2), "path": f"f{i}.png"} for i in range(31)]
    engine = Engine(lambda e, b: None)
    ProgressBar(unit="files").attach(engine)
    engine.run(DataLoader(data, batch_size=4), max_epochs=1)
    last = _last_line(capsys.readouterr().err)
    assert "31/31" in last and "files/s" in last, last
