"""Knee classifiers: MRNet / 3D ResNet-18 shapes, 2.5D Grad-CAM, the SVC head against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.networks.knee import SVMHead, fit_svm_head, knee_cam_layer, knee_classifier
from medplugin.visualize.cam import CapturedGradCAM as GradCAM


@pytest.mark.parametrize("arch", ["mrnet", "resnet3d18"])
def test_shapes_and_per_slice_or_3d_cam(arch):
    net = knee_classifier(arch, "resnet18", num_classes=4, transfer="scratch")
    x = torch.randn(2, 1, 6, 32, 32)
    assert net(x).shape == (2, 4)
    maps, _ = GradCAM(net, knee_cam_layer(arch, "resnet18"))(x)
    assert maps.shape == (2, 1, 6, 32, 32) and float(maps.max()) <= 1


def test_cam_of_a_2p5d_network_marks_the_slice_that_decides():
    """A bright block in slice 4 only: the max over slices takes it there, so the CAM peaks on slice 4."""
    torch.manual_seed(0)
    net = knee_classifier("mrnet", "resnet18", num_classes=2, transfer="scratch").eval()
    x = torch.zeros(1, 1, 8, 32, 32)
    x[0, 0, 4, 8:24, 8:24] = 5.0
    maps, logits = GradCAM(net, knee_cam_layer("mrnet", "resnet18"))(x, class_idx=int(net(x).argmax()))
    per_slice = maps[0, 0].flatten(1).max(1).values
    assert int(per_slice.argmax()) == 4


@pytest.mark.parametrize("k, kernel", [(2, "rbf"), (3, "linear")])
def test_svm_head_reproduces_sklearn_and_survives_the_state_dict(k, kernel):
    from sklearn.svm import SVC

    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(4, 1, 4, 32, 32, generator=g) + (torch.arange(4) % k).view(4, 1, 1, 1, 1) * 0.5,
             "label": torch.arange(4) % k} for _ in range(6)]
    net = knee_classifier("mrnet", "resnet18", num_classes=k, transfer="feature_extraction")
    info = fit_svm_head(net, data, kernel=kernel)
    assert info["n"] == 24 and len(info["support_vectors"]) == (1 if k == 2 else k)
    head = net.head
    assert isinstance(head, SVMHead) and bool(head.fitted)
    # the same features through a fresh scikit-learn SVC on the same standardised inputs
    with torch.no_grad():
        f = torch.cat([net.features(d["image"]) for d in data]).double().numpy()
    y = torch.cat([d["label"] for d in data]).numpy()
    z = (f - head.mean.double().numpy()) / head.scale.double().numpy()
    svc = SVC(kernel=kernel, gamma="scale", class_weight="balanced").fit(z, (y == 1).astype(int))
    with torch.no_grad():
        logits = head(torch.as_tensor(f, dtype=torch.float32)).double().numpy()
    ours = logits[:, 1] - logits[:, 0] if k == 2 else logits[:, 1]
    np.testing.assert_allclose(ours, svc.decision_function(z), atol=1e-3)
    fresh = knee_classifier("mrnet", "resnet18", num_classes=k, transfer="feature_extraction")
    fresh.load_state_dict(net.state_dict())  # support-vector count taken from the state dict
    x = data[0]["image"]
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="transfer must be one of .*got 'linear_probe'"):
        knee_classifier(transfer="linear_probe")
    with pytest.raises(ValueError, match="arch must be one of .*got 'vit'"):
        knee_classifier(arch="vit")
    with pytest.raises(TypeError, match="transfer='feature_extraction'"):
        fit_svm_head(knee_classifier(transfer="scratch"), [])
