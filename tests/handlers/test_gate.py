"""The input gate in an inference engine (:class:`InputGateHandler`) and the end-of-training OOD fit
(:class:`OODStatisticsFitter`), on tiny ignite engines with real DICOM files and a real (small) network."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

pydicom = pytest.importorskip("pydicom")

from medplugin.handlers import CAMSaver, InputGateHandler, OODStatisticsFitter, PredictionWriter  # noqa: E402
from medplugin.inferers import GradCAMInferer  # noqa: E402
from medplugin.networks import cam_layer, classifier  # noqa: E402
from tests.io._dicom_helpers import sample_file, with_phi  # noqa: E402

CLASSES = ["A", "B", "C"]
CHEST_SCOPE = {"dicom": {"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"], "ViewPosition": ["PA", "AP"]},
               "image": {"spatial_dims": 2, "colour": False, "min_size": 64}}


def _png(path, rgb: bool, size: int = 96, seed: int = 0):
    from PIL import Image

    if rgb:
        from medplugin.data.synthetic.fundus import synthetic_fundus

        Image.fromarray(synthetic_fundus(size=size, rng=seed)["image"]).save(path)
    else:
        from medplugin.data.synthetic.chest_xray import synthetic_chest_xray

        Image.fromarray(synthetic_chest_xray(size, rng=seed)["image"].astype(np.uint8)).save(path)
    return path


def _inputs(tmp_path):
    """A PA chest CR, a real MR slice, a lateral CR, a colour photograph, a knee volume (NIfTI, which the 2-D reader
    refuses: an error row) and a truncated PNG (an error row breaking no rule)."""
    import nibabel as nib

    from medplugin.data.synthetic.knee import synthetic_knee

    src = tmp_path / "in"
    src.mkdir()
    knee = synthetic_knee((12, 64, 64), condition=0, rng=0)["volume"] * 255
    nib.save(nib.Nifti1Image(knee.astype(np.float32), np.eye(4)), src / "knee.nii.gz")
    broken = src / "broken.png"
    broken.write_bytes(_png(src / "ok.png", rgb=False).read_bytes()[:60])
    return [
        {"path": str(with_phi(sample_file("RG1_UNCR.dcm"), src / "pa.dcm")), "error": ""},
        {"path": str(with_phi(sample_file("MR_small.dcm"), src / "mr.dcm")), "error": ""},
        {"path": str(with_phi(sample_file("RG1_UNCR.dcm"), src / "lat.dcm", ViewPosition="LL")), "error": ""},
        {"path": str(_png(src / "photo.png", rgb=True)), "error": ""},
        {"path": str(src / "knee.nii.gz"), "error": f"{src / 'knee.nii.gz'}: expected a 2D NIfTI image"},
        {"path": str(broken), "error": f"{broken}: truncated"},
    ]


def _engine(net, inferer=None, batch_size: int = 3, inputs=None):
    """An engine like the bundles' evaluator: the network runs on placeholder tensors of each batch."""
    def step(engine, batch):
        x = torch.rand(len(batch), 1, 32, 32, generator=torch.Generator().manual_seed(engine.state.iteration))
        logits = inferer(x, net) if inferer is not None else net(x)
        return [{"pred": torch.softmax(z.detach(), 0)} for z in logits]

    batches = [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]
    return Engine(step), batches


@pytest.fixture
def net():
    torch.manual_seed(0)
    return classifier("resnet18", in_channels=1, num_classes=len(CLASSES)).eval()


def test_the_gate_flags_inputs_a_chest_classifier_was_never_made_for(tmp_path, net):
    inputs = _inputs(tmp_path)
    engine, batches = _engine(net, inputs=inputs)
    gate = InputGateHandler(CHEST_SCOPE, "warn", str(tmp_path / "no_models"), net)
    gate.attach(engine)
    PredictionWriter(str(tmp_path / "out"), CLASSES, extra_columns=["in_scope", "out_of_scope_reason"]).attach(engine)
    engine.run(batches, max_epochs=1)
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader((tmp_path / "out" / "predictions.csv").open())}
    assert list(next(csv.reader((tmp_path / "out" / "predictions.csv").open()))) == [
        "file", "prediction", "prob_A", "prob_B", "prob_C", "in_scope", "out_of_scope_reason", "error"]
    got = {k: (r["in_scope"], r["out_of_scope_reason"]) for k, r in rows.items()}
    assert got == {
        "pa.dcm": ("true", ""),
        "mr.dcm": ("false", "Modality is MR, expected CR or DX"),
        "lat.dcm": ("false", "ViewPosition is LL, expected PA or AP"),
        "photo.png": ("false", got["photo.png"][1]),
        "knee.nii.gz": ("false", "a 3-D volume of shape (12, 64, 64), expected a 2-D image"),
        "broken.png": ("", ""),  # unreadable, no rule broken: the error says why, the gate says nothing
    }
    assert got["photo.png"][1].startswith("a colour image (channels differ by ")
    # warn: out-of-scope inputs still get probabilities; error rows never do
    assert all(rows[k]["prob_A"] for k in ("pa.dcm", "mr.dcm", "lat.dcm", "photo.png"))
    assert rows["knee.nii.gz"]["prob_A"] == "" and rows["knee.nii.gz"]["error"]
    assert gate.counts == {"checked": 6, "out_of_scope": 4}
    assert not any(m._forward_pre_hooks for m in net.modules())  # nothing left on the network
    assert "Qzyxwvut" not in (tmp_path / "out" / "predictions.csv").read_text()  # reasons name tags, not patients


def test_refuse_gives_no_probabilities_and_no_cams_to_out_of_scope_inputs(tmp_path, net):
    inputs = _inputs(tmp_path)[:4]
    inferer = GradCAMInferer(cam_layer("resnet18"))
    engine, batches = _engine(net, inferer, batch_size=4, inputs=inputs)
    InputGateHandler(CHEST_SCOPE, "refuse", None, net).attach(engine)
    PredictionWriter(str(tmp_path / "out"), CLASSES, extra_columns=["in_scope", "out_of_scope_reason"]).attach(engine)
    saver = CAMSaver(inferer, str(tmp_path / "out"), CLASSES)
    saver.attach(engine)
    engine.run(batches, max_epochs=1)
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader((tmp_path / "out" / "predictions.csv").open())}
    assert rows["pa.dcm"]["prob_A"] and rows["pa.dcm"]["prediction"] in CLASSES
    for k in ("mr.dcm", "lat.dcm", "photo.png"):
        assert rows[k]["in_scope"] == "false" and rows[k]["prediction"] == "" and rows[k]["prob_A"] == ""
        assert rows[k]["error"] == ""  # refused is not an error: the reason says why
    assert [s.split("_pred-")[0] for s in saver.saved] == ["pa"]


def _fit_statistics(net, ckpt, n_val: int):
    """model.pt of ``net``, model.json with keys of other handlers, then the OOD fit on synthetic radiographs."""
    from medplugin.data.synthetic.chest_xray import synthetic_chest_xray

    ckpt.mkdir(exist_ok=True)
    torch.save(net.state_dict(), ckpt / "model.pt")
    (ckpt / "model.json").write_text(json.dumps({"arch": "resnet18", "temperature": 1.2}))

    def images(seeds):
        return [{"image": (synthetic_chest_xray(32, rng=int(s))["image"][None] / 255.0).astype(np.float32),
                 "label": int(s) % 3} for s in seeds]

    other = classifier("resnet18", in_channels=1, num_classes=3)  # the live network: other (last-epoch) weights
    fitter = OODStatisticsFitter(other, str(ckpt), images(range(60)), images(range(100, 100 + n_val)), None,
                                 CLASSES, batch_size=16)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    block = fitter()
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # the live network untouched
    return block


def test_ood_statistics_are_fitted_on_the_best_weights_and_added_to_model_json(tmp_path, net):
    from medplugin.gate import MahalanobisOOD, collect_features

    ckpt = tmp_path / "models"
    block = _fit_statistics(net, ckpt, n_val=40)
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["temperature"] == 1.2  # read-modify-write: other keys stay
    assert meta["ood"] == block and block["class_conditional"] and block["classes"] == CLASSES
    assert block["n_train"] == 60 and block["n_val"] == 40 and block["threshold"] is not None
    assert "fewer than the 99 the 99th percentile needs" in block["threshold_note"]  # 40 validation images
    ood = MahalanobisOOD.load(block, ckpt)
    # the statistics are those of model.pt's weights (net), not of the live network's
    from medplugin.data.synthetic.chest_xray import synthetic_chest_xray

    val = [{"image": torch.as_tensor(np.stack([synthetic_chest_xray(32, rng=s)["image"][None] / 255.0
                                               for s in range(100, 140)]), dtype=torch.float32)}]
    logs = np.log(ood.score(collect_features(net, val)[0]))
    tail = np.exp(logs.mean() + 2.3263479 * logs.std(ddof=1))  # the 99th percentile of their log-normal
    assert block["threshold"] == pytest.approx(max(np.exp(logs.max()), tail), rel=1e-4)


def test_too_few_validation_images_give_scores_but_no_threshold(tmp_path, net):
    from medplugin.gate import InputGate

    ckpt = tmp_path / "models"
    block = _fit_statistics(net, ckpt, n_val=5)
    assert block["threshold"] is None and block["n_val"] == 5
    assert block["threshold_note"].startswith("no threshold: 5 validation image(s), at least 19 needed")
    gate = InputGate.from_config({}, model_json=json.loads((ckpt / "model.json").read_text()), model_dir=ckpt)
    far = gate.check(features=np.full(512, 1e3, dtype=np.float32))
    assert far.in_scope and far.ood_score > 0  # scored, not flagged


def test_the_ood_score_flags_another_kind_of_image_the_content_rules_pass(tmp_path, net):
    """Fitted on synthetic radiographs, the gate in an engine flags synthetic OCT B-scans (grayscale 2-D images the
    header and content rules pass) by their out-of-distribution score and keeps held-out radiographs."""
    from medplugin.data.synthetic.chest_xray import synthetic_chest_xray
    from medplugin.data.synthetic.oct import synthetic_oct_bscan

    ckpt = tmp_path / "models"
    block = _fit_statistics(net, ckpt, n_val=40)
    rng = np.random.default_rng(0)
    radiographs = [synthetic_chest_xray(32, rng=int(s))["image"] / 255.0 for s in range(200, 220)]
    bscans = [synthetic_oct_bscan(int(k), size=(64, 64), rng=rng)[0] / 255.0 for k in rng.integers(0, 4, 20)]
    bscans = list(torch.nn.functional.interpolate(torch.as_tensor(np.stack(bscans))[:, None], size=(32, 32),
                                                  mode="area")[:, 0].numpy())  # 48 x 48 at least, resized
    images = np.stack(radiographs + bscans)[:, None].astype(np.float32)
    items = [{"path": "", "error": "", "kind": "radiograph" if i < 20 else "oct"} for i in range(40)]

    def step(engine, batch):
        i = (engine.state.iteration - 1) * 8
        return [{"pred": torch.softmax(z, 0)} for z in net(torch.as_tensor(images[i:i + len(batch)])).detach()]

    engine = Engine(step)
    gate = InputGateHandler({"image": {"spatial_dims": 2}}, "warn", str(ckpt), net)
    gate.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.extend(
        (b["kind"], o["in_scope"], o["out_of_scope_reason"], o["ood_score"]) for b, o in zip(e.state.batch,
                                                                                           e.state.output)))
    engine.run([items[i:i + 8] for i in range(0, 40, 8)], max_epochs=1)
    kept = np.mean([s[1] for s in seen if s[0] == "radiograph"])
    flagged = np.mean([not s[1] for s in seen if s[0] == "oct"])
    assert kept >= 0.95 and flagged >= 0.95, (kept, flagged)
    reason = next(s[2] for s in seen if s[0] == "oct")
    assert reason.startswith("out-of-distribution score ") and f"{block['threshold']:.1f}" in reason
    assert all(s[3] is not None for s in seen)


def test_an_error_in_the_run_still_stops_it_and_the_hook_is_removed(tmp_path, net):
    """Ignite swallows an exception once a handler listens for it: the gate's handler must re-raise it."""
    _fit_statistics(net, tmp_path / "models", n_val=40)  # with statistics the gate hooks the network

    def step(engine, batch):
        net(torch.rand(1, 1, 32, 32))
        raise RuntimeError("model.json says --image_size 32")

    engine = Engine(step)
    InputGateHandler({}, "warn", str(tmp_path / "models"), net).attach(engine)
    with pytest.raises(RuntimeError, match="--image_size 32"):
        engine.run([[{"path": "", "error": ""}]], max_epochs=1)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())


def test_an_unreadable_training_image_costs_the_ood_statistics_not_the_trained_model(tmp_path, net, caplog):
    """The fit runs after training: a file that broke since (a source replaced by a cache) is logged, not fatal."""
    import logging

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from medplugin.io import Image2dReader

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    torch.save(net.state_dict(), ckpt / "model.pt")
    (ckpt / "model.json").write_text(json.dumps({"arch": "resnet18"}))
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = [{"image": str(broken), "label": 0}]
    load = Compose([LoadImaged("image", reader=Image2dReader()), EnsureChannelFirstd("image", channel_dim=0)])
    fitter = OODStatisticsFitter(net, str(ckpt), data, data, load, CLASSES)
    with caplog.at_level(logging.WARNING, logger="medplugin.handlers.gate"):
        assert fitter() is None
    assert f"no OOD statistics for {ckpt / 'model.pt'}: " in caplog.text and "broken.jpeg" in caplog.text
    assert json.loads((ckpt / "model.json").read_text()) == {"arch": "resnet18"}  # model.json as it was
    assert not (ckpt / "ood.npz").exists()
