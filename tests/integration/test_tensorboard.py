"""TensorBoard review of a training run: the event file's content, and the real server's HTTP API."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medplugin.tools.review import free_port, http_json, stop_process, wait_for_http
from tests.bundles._runner import REPO

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


@pytest.fixture(scope="module")
def run_dir(oct_smoke_run) -> Path:
    """The shared smoke training run of the OCT bundle (1 epoch, batch 4, 32 px, 2 CAM images)."""
    return oct_smoke_run[1]


def _accumulator(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_one_event_folder_with_loss_lr_metrics_cams_and_hparams(run_dir):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    assert [e.parent for e in events] == [run_dir / "tensorboard"]  # one event file, one folder, no hparams sub-run
    acc = _accumulator(run_dir)
    n_train = len(json.loads((run_dir / "datalist.json").read_text())["training"])

    loss = acc.Scalars("train_loss")  # per iteration
    assert [e.step for e in loss] == list(range(1, math.ceil(n_train / 4) + 1))
    assert all(math.isfinite(e.value) and e.value > 0 for e in loss)
    lr = acc.Scalars("learning_rate")  # per epoch
    assert [e.step for e in lr] == [1] and lr[0].value == pytest.approx(1e-4)
    per_class = [f"val_{c}_{m}" for c in CLASSES for m in ("sensitivity", "specificity", "auc")]
    for tag in ["val_accuracy", "val_macro_auc", *per_class]:
        points = acc.Scalars(tag)
        assert [e.step for e in points] == [1], tag  # one validation, epoch 1
        assert 0.0 <= points[0].value <= 1.0, tag
    cams = [t for t in acc.Tags()["images"] if t.startswith("gradcam/")]
    assert len(cams) == 2  # cam_images in the smoke overlay
    img = acc.Images(cams[0])[0]
    assert img.width == 32 and img.height == 32 and img.encoded_image_string[:4] == b"\x89PNG"

    hp = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in exp.metric_infos] == ["val_accuracy", "val_macro_auc"]
    assert {m.name.tag for m in exp.metric_infos} <= set(acc.Tags()["scalars"])
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    values = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in start.hparams.items()}
    # the values the run used: train.yaml's, with the smoke overlay's on top
    assert values["arch"] == "resnet50" and values["optimizer_name"] == "adam"
    assert values["num_epochs"] == 1 and values["batch_size"] == 4 and values["image_size"] == 32
    assert values["learning_rate"] == pytest.approx(1e-4) and values["pretrained"] == "none"
    end = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


@pytest.mark.slow
def test_tensorboard_server_serves_the_run(run_dir, tmp_path):
    """`medplugin tensorboard RUN_DIR` starts the real server; its HTTP API gives the logged scalars."""
    port = free_port()
    log = (tmp_path / "tensorboard.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "medplugin.cli", "tensorboard", str(run_dir), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline().strip().endswith(f"{base}/  (Ctrl-C stops it)")
        wait_for_http(f"{base}/data/runs", proc, timeout=120)
        deadline, tags = time.monotonic() + 120, {}
        while "tensorboard" not in tags and time.monotonic() < deadline:  # the first load runs in the background
            tags = http_json(f"{base}/data/plugin/scalars/tags")
            time.sleep(0.5)
        assert {"train_loss", "learning_rate", "val_accuracy", "val_macro_auc"} <= set(tags["tensorboard"])

        acc = _accumulator(run_dir)
        for tag in ("train_loss", "val_accuracy"):
            served = http_json(f"{base}/data/plugin/scalars/scalars?run=tensorboard&tag={tag}")
            expected = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert [(s, pytest.approx(v, rel=1e-6)) for _, s, v in served] == expected

        exp = http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {h["name"] for h in exp["hparamInfos"]} >= {"arch", "learning_rate", "batch_size", "num_epochs"}
        assert [m["name"]["tag"] for m in exp["metricInfos"]] == ["val_accuracy", "val_macro_auc"]
    finally:
        stop_process(proc)
        log.close()
    assert proc.returncode is not None
