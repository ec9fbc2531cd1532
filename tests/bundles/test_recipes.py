"""Each paper's recipe (``bundles/<bundle>/configs/recipes/<name>.yaml``, an overlay merged after train.yaml).

Three tiers, cheapest first:

- every key a recipe sets exists in train.yaml (MONAI would silently add an unknown key) and is used (another
  item refers to it, or it is an argument of a component); a key that only repeats train.yaml's value is listed
  here as pinned on purpose;
- in-process (MONAI's ``ConfigParser``, nothing trained): train.yaml + recipe resolve to the paper's settings in
  the built objects: the network and its frozen parameters, the optimizer, the schedule, the input
  normalisation, the key metric, the preprocessing output;
- one smoke training per recipe at the smallest size that runs, then its evaluation with the recipe in the
  config list (train.yaml, recipe, smoke.yaml, evaluate.yaml), all in one batch process
  (:mod:`tests.bundles._batch_runner`) starting from torchvision-layout random-weights files in a temporary
  ``TORCH_HOME`` (frozen modes refuse ``pretrained: none``). The trainings prove what only a run shows: frozen
  layers still hold the starting file's tensors after training, the others moved, and the model chosen by the
  lowest validation loss.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from monai.bundle import ConfigParser

from medplugin.data.chestxray14 import FINDINGS
from medplugin.networks.weights import TORCHVISION_WEIGHTS
from tests.bundles._batch_runner import bundle_case, run_cases
from tests.bundles._runner import REPO, SMOKE, bundle_dir
from tests.networks._fake_weights import _NEW_DENSENET_KEY, torchvision_file_name

# recipe -> dataset fixture, the ImageNet files it starts from, smoke overrides beyond smoke.yaml (the smallest
# size that runs), and the keys that repeat train.yaml's value on purpose (pinned against a changed default).
RECIPES = {
    "retina_oct_classification/resnet50_finetune": {
        "data": "oct_demo", "weights": ("resnet50",), "smoke": {},
        "pinned": {"arch", "pretrained", "image_size", "optimizer_name", "learning_rate",
                   "batch_size", "num_epochs"}},
    "retina_oct_classification/inception_v3_cell": {
        "data": "oct_demo", "weights": ("inception_v3",), "smoke": {"image_size": 80},  # Inception needs >= 75 px
        "pinned": {"pretrained", "optimizer_name"}},
    "chest_xray_classification/chexnet": {
        "data": "cxr_demo", "weights": ("densenet121",), "smoke": {"val_fraction": 0.3},
        "pinned": {"arch", "pretrained", "image_size", "batch_size", "optimizer_name", "pos_weight", "val_interval"}},
    "retina_fundus_classification/resnet50_annotated": {
        "data": "fundus_demo", "weights": ("resnet50",), "smoke": {},
        "pinned": {"arch", "pretrained", "task", "annotate", "rotate_degrees", "shift", "train#augmentation#hflip",
                   "train#augmentation#vflip"}},
    "knee_mri_classification/vgg16_svm": {
        "data": "knee_nifti", "weights": ("vgg16",), "smoke": {"num_slices": 8},
        "pinned": {"pretrained", "svm_kernel", "svm_c"}},
    "knee_mri_classification/vgg16_finetune": {
        "data": "knee_nifti", "weights": ("vgg16",), "smoke": {"num_slices": 8},
        "pinned": {"transfer", "pretrained"}},
    "knee_mri_classification/mrnet_alexnet": {
        "data": "knee_nifti", "weights": ("alexnet",), "smoke": {"image_size": 64},  # AlexNet needs >= 63 px
        "pinned": {"arch", "transfer", "pretrained", "task", "plane", "image_size", "optimizer_name"}},
}
IDS = list(RECIPES)


def _recipe_file(recipe: str) -> Path:
    bundle, name = recipe.split("/")
    return bundle_dir(bundle) / "configs" / "recipes" / f"{name}.yaml"


def _train_file(recipe: str) -> Path:
    return bundle_dir(recipe.split("/")[0]) / "configs" / "train.yaml"


def test_every_recipe_on_disk_is_tested_and_documented():
    on_disk = {f"{p.parts[-4]}/{p.stem}" for p in (REPO / "bundles").glob("*/configs/recipes/*.yaml")}
    assert on_disk == set(RECIPES)
    readme = (REPO / "README.md").read_text()
    for recipe in RECIPES:
        bundle, name = recipe.split("/")
        docs = (bundle_dir(bundle) / "docs" / "README.md").read_text()
        section = docs[docs.index("## Recipes"):]
        assert f"configs/recipes/{name}.yaml" in section, f"{bundle}/docs/README.md's Recipes section lacks {name}"
        assert f"{bundle}/configs/recipes/{name}.yaml" in readme, f"README.md does not list {recipe}"


def _strings(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, (*path, str(i)))
    elif isinstance(node, str):
        yield "#".join(path), node


def _used(config: dict, parser: ConfigParser, key: str) -> bool:
    """Another item refers to ``key`` (``@key``, also inside expressions), or ``key`` is an argument of a component
    (its parent has a ``_target_``)."""
    if "#" in key:
        parent = parser[key.rsplit("#", 1)[0]]
        if isinstance(parent, dict) and "_target_" in parent:
            return True
    ref = re.compile("@" + re.escape(key) + r"(?![\w])")
    return any(ref.search(text) for where, text in _strings(config) if where != key)


@pytest.mark.parametrize("recipe", IDS)
def test_recipe_keys_exist_in_train_yaml_and_are_used(recipe):
    recipe_keys = yaml.safe_load(_recipe_file(recipe).read_text())
    train = ConfigParser()
    train.read_config(str(_train_file(recipe)))
    unknown = [k for k in recipe_keys if k not in train]
    assert not unknown, f"{recipe} sets keys train.yaml does not have (MONAI would add them unused): {unknown}"
    unused = [k for k in recipe_keys if not _used(train.config, train, k)]
    assert not unused, f"{recipe} sets keys nothing in train.yaml uses: {unused}"
    same = {k for k, v in recipe_keys.items() if train[k] == v}
    assert same == RECIPES[recipe]["pinned"], "keys repeating train.yaml's value changed: pin or drop them"
    assert len(recipe_keys) > len(same)  # the recipe changes something


def _write_imagenet_file(torch_home: Path, arch: str) -> Path:
    """torchvision's ImageNet file of ``arch`` by its published name and key layout, holding torchvision's own
    random initialisation and random batch-norm statistics (means around 0, variances in [0.5, 1.5]): frozen
    layers run in eval mode on these statistics, so they must be valid ones. DenseNet-121's file has its 2017 key
    names (``norm.1``, ...); VGG16's and AlexNet's hold the ``features.*`` part only (MRNet's backbone takes
    nothing else, and VGG16's classifier would be 480 MB)."""
    models = torchvision.models
    torch.manual_seed(0)
    if arch == "vgg16":
        module = torch.nn.Sequential()
        module.features = models.vgg.make_layers(models.vgg.cfgs["D"])
    elif arch == "alexnet":
        module = torch.nn.Sequential()
        module.features = models.AlexNet().features
    else:
        module = models.get_model(arch, weights=None, **({"aux_logits": True} if arch == "inception_v3" else {}))
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = module.state_dict()
    if arch == "densenet121":
        state = {_NEW_DENSENET_KEY.sub(r"\1.\2.\3", k): v for k, v in state.items()
                 if not k.endswith("num_batches_tracked")}
    path = torch_home / "hub" / "checkpoints" / torchvision_file_name(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """One TORCH_HOME with every ImageNet file the recipes start from."""
    home = tmp_path_factory.mktemp("recipes_torch_home")
    for arch in ("resnet50", "inception_v3", "densenet121", "vgg16", "alexnet"):
        _write_imagenet_file(home, arch)
    return home


def _file_state(torch_home: Path, arch: str) -> dict[str, torch.Tensor]:
    return torch.load(torch_home / "hub" / "checkpoints" / torchvision_file_name(arch), weights_only=True)


def _parser(recipe: str, request, tmp_path: Path, *overlays: Path) -> ConfigParser:
    bundle = recipe.split("/")[0]
    parser = ConfigParser()
    parser.read_config([str(_train_file(recipe)), str(_recipe_file(recipe)), *map(str, overlays)])
    parser.update({"bundle_root": str(bundle_dir(bundle)), "dataset_dir": str(request.getfixturevalue(
        RECIPES[recipe]["data"])), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "run"),
        "device": "$torch.device('cpu')", "num_workers": 0})
    return parser


def _head_free(net: torch.nn.Module, head: tuple[str, ...]) -> list[str]:
    return [n for n, _ in net.named_parameters() if not n.startswith(head)]


@pytest.mark.parametrize("recipe", IDS)
def test_recipe_resolves_to_the_papers_settings(recipe, request, tmp_path, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("MEDPLUGIN_OFFLINE", "1")
    parser = _parser(recipe, request, tmp_path)
    get = parser.get_parsed_content
    net = get("network")
    arch = RECIPES[recipe]["weights"][0]
    file = str(torch_home / "hub" / "checkpoints" / torchvision_file_name(arch))
    assert net.pretrained_source == {"pretrained": "imagenet", "weights": f"torchvision {TORCHVISION_WEIGHTS[arch]}",
                                     "file": file}
    opt = get("optimizer")
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    stepped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert stepped <= trainable or (get("transfer") == "feature_extraction" and not stepped & {id(p) for p in
                                                                                              net.parameters()})
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    name = recipe.split("/")[1]
    if name == "resnet50_finetune":
        assert type(net).__name__ == "ResNetClassifier" and len(net.layer3) == 6  # ResNet-50
        assert not frozen and isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-4
        assert get("normalization") == ([0.449], [0.226])  # ImageNet's gray mean/std
    elif name == "inception_v3_cell":
        assert frozen == set(_head_free(net, ("head.",)))  # the whole base frozen, the head trained
        linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(2048, 64), (64, 4)]
        assert any(isinstance(m, torch.nn.ReLU) for m in net.head)
        assert isinstance(net.head[0], torch.nn.AdaptiveAvgPool2d)  # global pooling
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-3
        assert get("train#dataloader").batch_size == 128
        image = get("preprocessing")(get("datalist_all")["training"][0])["image"]
        assert tuple(image.shape) == (1, 299, 299) and -1.0 <= float(image.min()) < float(image.max()) <= 1.0
        assert get("normalization") == ([0.5], [0.5])  # [0, 1] -> [-1, 1]
    elif name == "chexnet":
        assert type(net).__name__ == "DenseNetClassifier" and net.features.conv0.weight.shape[1] == 3
        assert net.class_layers.out.out_features == len(FINDINGS) and not frozen
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 0
        sched = get("lr_scheduler")
        assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert (sched.mode, sched.factor, sched.patience) == ("min", 0.1, 0)
        assert get("loss").pos_weight is None  # unweighted BCE
        saver = next(h for h in parser["validate#handlers"] if h["_target_"].endswith("BestModelSaver"))
        assert saver["key_metric"] == "@selection_metric" and get("selection_metric") == "val_loss"
        assert ConfigParser(parser.config).get_parsed_content(
            "validate#handlers#" + str(parser["validate#handlers"].index(saver)) + "#mode") == "min"
        assert get("normalization") == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        aug = parser["train#augmentation"]
        assert (aug["hflip"], aug["rotate_degrees"], aug["zoom"], aug["intensity"]) == (True, 0, [1.0, 1.0], 0.0)
        image = get("preprocessing")(get("datalist_all")["training"][0])["image"]
        assert tuple(image.shape) == (3, 224, 224)
    elif name == "resnet50_annotated":
        assert net.frozen_prefixes == ("conv1", "bn1", "layer1", "layer2")
        lower = ("conv1.", "bn1.", "layer1.", "layer2.")
        assert frozen == {n for n, _ in net.named_parameters() if n.startswith(lower)}
        assert get("fundus_preprocessing#mode") == "annotated" and get("in_channels") == 3
        assert (get("train#augmentation#rotate_degrees"), get("train#augmentation#shift")) == (45, 0.1)
        assert get("train#augmentation#hflip") and get("train#augmentation#vflip")
        assert get("key_metric_name") == "val_auc"
    elif name in ("vgg16_svm", "vgg16_finetune"):
        convs = [m for m in net.backbone if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 13  # VGG16's 13 convolutions
        if name == "vgg16_svm":
            assert frozen == set(_head_free(net, ("head.",))) and type(net.head).__name__ == "SVMHead"
            assert (get("svm#fit#kernel"), get("svm#fit#c")) == ("rbf", 1.0)
        else:
            assert not frozen and opt.defaults["lr"] == 1e-5
    elif name == "mrnet_alexnet":
        assert [m.out_channels for m in net.backbone if isinstance(m, torch.nn.Conv2d)] == [64, 192, 384, 256, 256]
        assert not frozen and net.head.out_features == 2 and get("class_names") == ["healthy", "unhealthy"]
        assert isinstance(opt, torch.optim.Adam) and (opt.defaults["lr"], opt.defaults["weight_decay"]) == (1e-5, 0.01)
        assert get("num_slices") is None and get("train#dataloader").batch_size == 1
        assert get("train#augmentation#rotate_degrees") == 25 and get("image_size") == 256
    else:
        raise AssertionError(f"no checks for {recipe}")


def test_chest_val_loss_is_the_training_bce_on_the_logits(request, tmp_path, torch_home, monkeypatch):
    """The chest config's val_loss (logits kept by the validation postprocessing, then ignite's Loss with the
    training loss) equals BCE with logits computed directly, with pos_weight as training has it."""
    from monai.data import decollate_batch

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    parser = _parser("chest_xray_classification/chexnet", request, tmp_path)
    parser["pos_weight"] = True
    metric = parser.get_parsed_content("validate#additional_metrics#val_loss")
    post = parser.get_parsed_content("validate#postprocessing")
    loss = parser.get_parsed_content("loss")
    assert loss.pos_weight is not None and metric._loss_fn is loss
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 14) * 3, (torch.rand(7, 14) > 0.7).float()
    metric.reset()
    for sl in (slice(0, 4), slice(4, 7)):  # two batches of unequal size, decollated as the evaluator does
        items = [post(d) for d in decollate_batch({"pred": logits[sl], "label": labels[sl]})]
        assert torch.allclose(items[0]["pred"], torch.sigmoid(logits[sl][0]))  # the sigmoid still applies
        metric.update(metric._output_transform(items))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=loss.pos_weight)
    assert metric.compute() == pytest.approx(float(expected), rel=1e-6)


def test_plateau_decay_steps_on_each_epochs_validation_loss_and_refuses_stale_ones():
    """CheXNet's schedule as the chest config wires it: the validator runs first, then MONAI's LrScheduleHandler
    with medplugin.training.lr_step_input divides the rate by 10 after an epoch whose val_loss did not fall."""
    from ignite.engine import Engine, Events
    from monai.handlers import LrScheduleHandler

    from medplugin.training import lr_step_input

    losses = iter([0.9, 0.7, 0.8, 0.6, 0.6])
    validator = Engine(lambda e, b: None)
    validator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_loss=next(losses)))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=0)
    trainer = Engine(lambda e, b: None)
    lrs = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):  # what ValidationHandler does, attached before the scheduler handler
        validator.state.max_epochs = None
        validator.run([0], max_epochs=1)
        validator.state.epoch = engine.state.epoch  # MONAI's Evaluator.run(global_epoch) leaves this epoch

    LrScheduleHandler(sched, print_lr=False, step_transform=lr_step_input(sched, validator, "val_loss")).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    trainer.run([0], max_epochs=5)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])  # decayed after 0.8 and after the repeated 0.6
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    assert lr_step_input(cosine, validator, "val_loss")(trainer) == ()  # epoch schedules take no argument
    stale = Engine(lambda e, b: None)
    stale.run([0], max_epochs=3)  # a trainer at epoch 3 whose validator last ran at epoch 5 (or never)
    with pytest.raises(RuntimeError, match=r"steps on each epoch's val_loss, but the last validation was at epoch 5 "
                                           r"and this is epoch 3: run with --val_interval 1"):
        lr_step_input(sched, validator, "val_loss")(stale)


# ---- one smoke training per recipe, then its evaluation, in one batch process ------------------------------------

@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory, torch_home) -> dict:
    """recipe -> {"train": (status, log), "evaluate": (status, log), "dirs": ...}."""
    tmp = tmp_path_factory.mktemp("recipe_runs")
    cases, plan = [], {}
    env = {"TORCH_HOME": torch_home, "MEDPLUGIN_OFFLINE": 1}
    for recipe, spec in RECIPES.items():
        bundle, name = recipe.split("/")
        b, data = bundle_dir(bundle), request.getfixturevalue(spec["data"])
        ckpt, run, ev = tmp / name / "models", tmp / name / "train", tmp / name / "evaluate"
        common = {"dataset_dir": data, "ckpt_dir": ckpt, **spec["smoke"]}
        # the smoke overlay last (it sets pretrained: none): the cached ImageNet file as the recipe says
        cases.append(bundle_case(b, [_train_file(recipe), _recipe_file(recipe), SMOKE], env, output_dir=run,
                                 pretrained="imagenet", **common))
        # evaluation as documented, the recipe in the list; training's smoke settings before evaluate.yaml
        cases.append(bundle_case(b, [_train_file(recipe), _recipe_file(recipe), SMOKE, b / "configs" / "evaluate.yaml"],
                                 env, output_dir=ev, **common))
        plan[recipe] = {"ckpt": ckpt, "evaluate": ev}
    results = run_cases(cases, {**_quiet_env()}, tmp / "logs", timeout=1800)
    for i, recipe in enumerate(RECIPES):
        plan[recipe].update(train=results[2 * i], evaluated=results[2 * i + 1])
    return plan


def _quiet_env() -> dict:
    import os

    import matplotlib

    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
            "MPLCONFIGDIR": matplotlib.get_configdir()}


def _ok(result: tuple[int, str]) -> str:
    rc, log = result
    assert rc == 0, f"run failed ({rc}):\n{log[-6000:]}"
    return log


def _tensors_equal(state: dict, file_state: dict, pairs) -> list[str]:
    """The keys (ours) whose tensors differ from the file's (``pairs``: ours -> the file's key)."""
    return [k for k, f in pairs if not torch.equal(state[k], file_state[f])]


@pytest.mark.parametrize("recipe", IDS)
def test_recipe_trains_in_the_smoke_run_and_its_model_evaluates(recipe, smoke_runs, torch_home):
    run = smoke_runs[recipe]
    log = _ok(run["train"])
    arch = RECIPES[recipe]["weights"][0]
    file = torch_home / "hub" / "checkpoints" / torchvision_file_name(arch)
    meta = json.loads((run["ckpt"] / "model.json").read_text())
    assert meta["pretrained"] == {"pretrained": "imagenet", "weights": f"torchvision {TORCHVISION_WEIGHTS[arch]}",
                                  "file": str(file)}
    state = torch.load(run["ckpt"] / "model.pt", weights_only=True)
    src = _file_state(torch_home, arch)
    name = recipe.split("/")[1]
    if name == "inception_v3_cell":  # the frozen base still holds the file's tensors (first conv summed to gray)
        base = [(k, k[len("base."):]) for k in state if k.startswith("base.") and k[len("base."):] in src
                and not k.endswith("num_batches_tracked")]
        first = "base.Conv2d_1a_3x3.conv.weight"
        assert torch.equal(state[first], src[first[len("base."):]].sum(1, keepdim=True))
        assert len(base) > 300 and _tensors_equal(state, src, [p for p in base if p[0] != first]) == []
        assert not torch.equal(state["head.2.weight"], torch.zeros_like(state["head.2.weight"]))
    elif name == "resnet50_annotated":  # layers before layer3 unchanged, layer3 on trained
        kept = [(k, k) for k in src if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
                and not k.endswith("num_batches_tracked")]
        assert kept and _tensors_equal(state, src, kept) == []
        moved = [(k, k) for k in src if k.startswith(("layer3.", "layer4.")) and k.endswith("conv1.weight")]
        assert len(_tensors_equal(state, src, moved)) == len(moved)
    elif name == "vgg16_svm":  # the frozen VGG16 features are the file's; the SVC's support vectors are saved
        kept = [("backbone." + k[len("features."):], k) for k in src]
        assert _tensors_equal(state, src, kept) == []
        assert any(k.startswith("head.") and v.numel() > 0 for k, v in state.items())
    else:  # whole networks fine-tuned: the first convolution moved away from the file's
        first = {"resnet50_finetune": ("conv1.weight", "conv1.weight"),
                 "chexnet": ("features.conv0.weight", "features.conv0.weight"),
                 "vgg16_finetune": ("backbone.0.weight", "features.0.weight"),
                 "mrnet_alexnet": ("backbone.0.weight", "features.0.weight")}[name]
        ours = src[first[1]].sum(1, keepdim=True) if state[first[0]].shape[1] == 1 else src[first[1]]
        assert state[first[0]].shape == ours.shape and not torch.equal(state[first[0]], ours)
    if name == "chexnet":  # the model kept is the one with the lowest validation loss, RGB input, 14 outputs
        assert meta["in_channels"] == 3 and meta["class_names"] == list(FINDINGS)
        assert "val_loss" in meta and math.isfinite(meta["val_loss"]) and "the lowest so far" in log
    if name == "mrnet_alexnet":
        assert meta["class_names"] == ["healthy", "unhealthy"] and meta["num_slices"] is None
    _ok(run["evaluated"])
    assert (run["evaluate"] / "metrics.json").is_file()
