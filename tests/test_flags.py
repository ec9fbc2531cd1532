"""Yes/no hyperparameters given on the command line (``--save_cams false``) arrive as strings."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.handlers import CAMSaver
from medplugin.inferers import GradCAMInferer
from medplugin.utils import as_flag


@pytest.mark.parametrize("text,expected", [("false", False), ("False", False), ("0", False), ("no", False),
                                           ("true", True), (" TRUE ", True), ("1", True), (False, False), (1, True)])
def test_as_flag_reads_command_line_strings(text, expected):
    assert as_flag(text) is expected


def test_as_flag_names_a_bad_value():
    with pytest.raises(ValueError, match=r"save_cams must be true or false, got 'maybe'"):
        as_flag("maybe", "save_cams")


def test_save_cams_false_from_the_command_line_turns_grad_cam_off(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    inferer = GradCAMInferer("0", enabled="false")
    with torch.no_grad():
        out = inferer(torch.rand(2, 1, 8, 8), net)
    assert out.shape == (2, 2) and not inferer.ready  # no graph kept, no maps
    saver = CAMSaver(inferer, str(tmp_path), ["a", "b"], enabled="false")
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    assert not engine.has_event_handler(saver, Events.ITERATION_COMPLETED)
    assert GradCAMInferer("0", enabled="true").enabled is True
