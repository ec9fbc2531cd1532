"""CAMSaver and TensorBoardCAMHandler on a tiny ignite Engine whose iteration runs the GradCAMInferer: overlays
read back with PIL at each image's own size, 3D maps with nibabel on the exam file's grid, TensorBoard images
with EventAccumulator."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import list_data_collate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import CAMSaver, TensorBoardCAMHandler
from medplugin.inferers import GradCAMInferer
from medplugin.transforms import image_classification_preprocessing, knee_classification_preprocessing
from tests.transforms.spatial._planted import FILE_AFFINE, FILE_SHAPE, write_exam

CLASSES = ["a", "b", "c"]


def _net(dims: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(4, classes)).eval()


def _pngs(tmp_path, sizes) -> list[str]:
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((h, w)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _engine(net, inferer, batch, sigmoid=False) -> Engine:
    def step(engine, b):
        logits = inferer(b["image"], net)
        return {"pred": torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 1)}

    return Engine(step)


def _batch(prep, paths, labels=None) -> dict:
    items = [prep({"image": p}) for p in paths]
    for i, it in enumerate(items):
        it.update(name=f"img{i}", error="", **({"label": labels[i]} if labels is not None else {}))
    return list_data_collate(items)


def test_2d_overlays_of_the_predicted_class_at_each_images_own_size(tmp_path):
    paths = _pngs(tmp_path, [(40, 60), (30, 30)])
    prep = image_classification_preprocessing(16, uint8=False)
    net, inferer = _net(), GradCAMInferer("1")
    batch = _batch(prep, paths, labels=[0, 1])
    with torch.no_grad():
        preds = torch.softmax(net(batch["image"]), 1).argmax(1).tolist()
    saver = CAMSaver(inferer, str(tmp_path / "out"), CLASSES)
    engine = _engine(net, inferer, batch)
    saver.attach(engine)
    engine.run([batch])
    for i, (h, w) in enumerate([(40, 60), (30, 30)]):
        with Image.open(tmp_path / "out" / "cams" / f"img{i}_pred-{CLASSES[preds[i]]}_gradcam.png") as im:
            assert im.size == (w, h) and im.mode == "RGB"
    assert not inferer.ready  # the graph is freed
    # only the misclassified: the labels are set so that exactly the first image is wrong
    batch["label"] = torch.tensor([(preds[0] + 1) % 3, preds[1]])
    wrong = CAMSaver(GradCAMInferer("1"), str(tmp_path / "mis"), CLASSES, only_misclassified=True, subdir="m")
    engine = _engine(net, wrong.inferer, batch)
    wrong.attach(engine)
    engine.run([batch])
    files = sorted(p.name for p in (tmp_path / "mis" / "m").iterdir())
    assert files == [f"img0_true-{CLASSES[(preds[0] + 1) % 3]}_pred-{CLASSES[preds[0]]}_gradcam.png"]


def test_multi_label_maps_per_finding_and_the_lung_crop_region(tmp_path):
    paths = _pngs(tmp_path, [(40, 60)])
    prep = image_classification_preprocessing(16, uint8=False)
    batch = _batch(prep, paths)
    batch["crop_box"] = torch.tensor([[10, 20, 30, 50, 40, 60]])  # the model saw rows 10..29, cols 20..49
    net, inferer = _net(), GradCAMInferer("1")
    saver = CAMSaver(inferer, str(tmp_path / "out"), CLASSES, multi_label=True, findings=["a", "c"])
    engine = _engine(net, inferer, batch, sigmoid=True)
    saver.attach(engine)
    engine.run([batch])
    names = sorted(p.name for p in (tmp_path / "out" / "cams").iterdir())
    assert [n.split("_p")[0] for n in names] == ["img0_a", "img0_c"] and all(n.endswith("_gradcam.png") for n in names)
    assert inferer.ready  # multi-label keeps the graph for the localisation evaluator
    none = CAMSaver(inferer, str(tmp_path / "none"), CLASSES, multi_label=True, threshold=1.0)  # nothing called
    engine = _engine(net, inferer, batch, sigmoid=True)
    none.attach(engine)
    engine.run([batch])
    assert inferer.ready and not (tmp_path / "none").exists()  # still kept, though this saver had nothing to map
    heat = saver._on_original(torch.ones(1, 16, 16), {"crop_box": batch["crop_box"][0]}, (40, 60), None)
    assert heat.shape == (1, 40, 60) and torch.allclose(heat[0, 10:30, 20:50], torch.ones(20, 30))
    assert float(heat.sum()) == pytest.approx(20 * 30)  # zero outside the crop
    with pytest.raises(ValueError, match=r"findings \['z'\] are not among"):
        CAMSaver(inferer, str(tmp_path), CLASSES, multi_label=True, findings=["z"])


def test_3d_map_goes_to_the_exam_files_grid_as_nifti_and_a_montage(tmp_path):
    path = tmp_path / "exam.nii.gz"
    write_exam(path)
    prep = knee_classification_preprocessing(image_size=10, num_slices=6)
    batch = list_data_collate([{**prep({"image": str(path)}), "name": "exam", "error": ""}])
    net, inferer = _net(dims=3), GradCAMInferer("1")
    writer = SummaryWriter(str(tmp_path / "tb"))
    saver = CAMSaver(inferer, str(tmp_path / "out"), CLASSES, max_slices=4, summary_writer=writer, transform=prep)
    engine = _engine(net, inferer, batch)
    saver.attach(engine)
    engine.run([batch])
    writer.close()
    (nii_path,) = (tmp_path / "out" / "cams").glob("exam_pred-*_cam.nii.gz")
    nii = nib.load(nii_path)
    assert nii.shape == FILE_SHAPE and np.allclose(nii.affine, FILE_AFFINE)
    cam = nii.get_fdata()
    # the network saw the loader's slices 2..7 of 10; the loader's slice axis is the file's axis 1
    assert cam.max() > 0 and cam[:, :2].max() == 0 and cam[:, 8:].max() == 0
    with Image.open(str(nii_path).replace("_cam.nii.gz", "_montage.png")) as im:
        assert im.size == (4 * 20, 20)  # 4 slices of 20 x 20, in one row
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [t.split("/")[0] for t in acc.Tags()["images"]] == ["gradcam_montage"]


@pytest.mark.parametrize("dims", [2, 3])
def test_tensorboard_cam_images_of_fixed_inputs_every_interval(tmp_path, dims):
    if dims == 2:
        data = [{"image": p, "label": i} for i, p in enumerate(_pngs(tmp_path, [(40, 60), (30, 30)]))]
        transform = image_classification_preprocessing(16, uint8=False)
    else:
        write_exam(tmp_path / "exam.nii.gz")
        data = [{"image": str(tmp_path / "exam.nii.gz"), "label": "unknown"}]
        transform = knee_classification_preprocessing(image_size=10, num_slices=6)
    net = _net(dims)
    net.train()
    writer = SummaryWriter(str(tmp_path / "tb"))
    handler = TensorBoardCAMHandler(writer, net, "1", data, transform, CLASSES, max_images=2, interval=2, max_slices=4)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=4)
    writer.close()
    assert net.training and all(len(m._forward_hooks) == 0 for m in net.modules())  # mode restored, no hook left
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["images"])
    assert tags == (["gradcam/00_true-a", "gradcam/01_true-b"] if dims == 2 else ["gradcam/00_true-?"])
    events = acc.Images(tags[0])
    assert [e.step for e in events] == [2, 4]  # every second epoch
    img = Image.open(io.BytesIO(events[0].encoded_image_string))
    assert img.size == ((16, 16) if dims == 2 else (4 * 10, 10))  # the overlay; 4 slices of 10 x 10
    with pytest.raises(ValueError, match="max_images must be at least 1"):
        TensorBoardCAMHandler(writer, net, "1", data, transform, CLASSES, max_images=0)


def test_tensorboard_cams_cover_every_class_and_multi_label_images_per_finding(tmp_path):
    """OCT: the first validation images were all of one class; chest: a map per finding, not argmax of 14 sigmoids."""
    paths = _pngs(tmp_path, [(20, 20)] * 6)
    transform = image_classification_preprocessing(16, uint8=False)
    net = _net(2)
    # the validation list sorted by class: three of "a" first
    single = [{"image": p, "label": lab} for p, lab in zip(paths, [0, 0, 0, 1, 1, 2])]
    multi = [{"image": paths[0], "label": [1, 0, 1]}, {"image": paths[1], "label": [0, 0, 0]}]
    for name, data in (("single", single), ("multi", multi)):
        writer = SummaryWriter(str(tmp_path / name))
        engine = Engine(lambda e, b: None)
        TensorBoardCAMHandler(writer, net, "1", data, transform, CLASSES, max_images=3).attach(engine)
        engine.run([0], max_epochs=1)
        writer.close()
    acc = EventAccumulator(str(tmp_path / "single"), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["gradcam/00_true-a", "gradcam/01_true-b", "gradcam/02_true-c"]
    acc = EventAccumulator(str(tmp_path / "multi"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    images = sorted(acc.Tags()["images"])
    assert images[:2] == ["gradcam/00_a", "gradcam/00_c"]  # both findings of the first image
    assert len(images) == 3 and images[2].startswith("gradcam/01_")  # no finding: the most probable one
    text = acc.Tensors("gradcam/00_c/prediction/text_summary")[0].tensor_proto.string_val[0].decode()
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(transform({"image": paths[0]})["image"]), dtype=torch.float32)
        p_c = float(torch.sigmoid(net(x[None])[0, 2]))
    assert text == f"p(c) = {p_c:.3f}; true: a, c"
    assert acc.Tensors(f"{images[2]}/prediction/text_summary")[0].tensor_proto.string_val[0].decode().endswith(
        "; true: none")
