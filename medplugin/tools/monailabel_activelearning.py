"""MONAI Label: label the most uncertain study first. Runs inside the MONAI Label environment (imports monailabel).

The app that :func:`medplugin.tools.monailabel.assemble_app` writes is MONAI Label's stock ``monaibundle`` app with
:class:`UncertaintyAppMixin` added. Started with ``--conf uncertainty_models <bundle,...|all>``, it registers for
each of those bundles, as MONAI Label's own epistemic active learning does:

- a **scoring method** ``<bundle>_uncertainty`` (:class:`UncertaintyScoring`; run by ``POST /scoring/<name>``, after
  each training when MONAI Label's ``MONAI_LABEL_AUTO_UPDATE_SCORING`` is on, or on demand by the strategy). It runs
  the bundle's inference config as the app's infer task does (:class:`UncertaintyInferTask`, a
  ``BundleInferTask``: the bundle's preprocessing, network, ``models/model.pt`` and inferer), with several passes
  per study (test-time augmentation, or MC dropout where the network has dropout), and stores the entropy of the
  mean prediction (:mod:`medplugin.tools.uncertainty`) in the datastore's image info under ``<bundle>_uncertainty``
  with a stamp of the model file it came from: a new model (after ``/train``) makes every score stale.
- an **active-learning strategy** ``<bundle>_uncertainty`` (:class:`UncertaintyStrategy`; ``POST
  /activelearning/<name>``): the unlabelled study with the highest current score, scoring stale or unscored studies
  first (``--conf uncertainty_on_demand false`` leaves that to ``/scoring``). A study the strategy served within
  ``uncertainty_reserve_s`` seconds (default one hour) goes after the others, so two annotators, or one who skips
  a study, are not handed the same study again.

Other ``--conf`` keys: ``uncertainty_method`` (``auto``: MC dropout where the network has dropout, else TTA;
``tta``; ``dropout``), ``uncertainty_passes`` (MC dropout passes, default 8), ``uncertainty_shift`` (TTA shift as a
fraction of the image size, default 0.05). The flips a bundle's TTA may use are in :data:`TTA_FLIPS`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from monai.transforms import Activationsd, Compose
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.infer.bundle import BundleInferTask

from medplugin.tools import uncertainty as U

logger = logging.getLogger(__name__)

SUFFIX = "_uncertainty"  # scoring method, strategy and image-info key: <bundle>_uncertainty
METHODS = ("auto", "tta", "dropout")

# Flips that leave a study's meaning unchanged, per bundle, as tensor axes counted from the end after the bundle's
# preprocessing (-1: image columns, left-right). Every bundle also gets small shifts along its in-plane axes.
# Left out on purpose: radiographs (a mirrored chest is another anatomy: the heart, the aortic knob and the side
# marker change sides) and knee MRI volumes (medial and lateral compartments differ).
TTA_FLIPS: dict[str, tuple[int, ...]] = {
    "retina_oct_classification": (-1,),  # B-scans of right and left eyes are mirror images of each other
    "retina_fundus_classification": (-1,),  # so are fundus photographs of right and left eyes
}


def _flag(value, default: bool, what: str = "value") -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{what}: expected true or false, got {value!r}")


def _number(conf: dict, key: str, default, kind=float):
    value = conf.get(key)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--conf {key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from e


def model_stamp(path: str | None) -> str | None:
    """Identity of a model file's current content (modification time in ns and size): a score carries the stamp of
    the weights it came from, so a retrained model makes it stale."""
    if not path or not os.path.exists(path):
        return None
    st = os.stat(path)
    return f"{st.st_mtime_ns}:{st.st_size}"


class UncertaintyInferTask(BundleInferTask):
    """A bundle's inference, as the app's infer task runs it, returning per-study uncertainty instead of a label.

    Pre-processing, network (with ``models/model.pt``) and inferer are the bundle's (``BundleInferTask``); the
    bundle's post-processing and MONAI Label's restore and writer steps are skipped. :meth:`run_inferer` runs the
    passes (test-time augmentation, or MC dropout), averages the probabilities, and puts the mean under ``pred``
    and the score under ``uncertainty`` of the returned data.

    Args:
        path: the bundle folder (``<app>/model/<bundle>``).
        conf: the app's ``--conf`` values.
        method: ``auto`` (MC dropout where the network has dropout with p > 0, else TTA), ``tta`` or ``dropout``.
        passes: MC dropout passes.
        flips: TTA flips (:func:`medplugin.tools.uncertainty.tta_plan`); default from :data:`TTA_FLIPS`.
        shift: TTA shift as a fraction of each in-plane size.
    """

    def __init__(self, path: str, conf: dict, method: str = "auto", passes: int = 8,
                 flips: tuple[int, ...] | None = None, shift: float = 0.05):
        if method not in METHODS:
            raise ValueError(f"uncertainty method must be one of {list(METHODS)}, got {method!r}")
        self.method, self.passes = method, int(passes)
        self.name = os.path.basename(os.path.normpath(path))
        self.flips = TTA_FLIPS.get(self.name, ()) if flips is None else tuple(flips)
        self.shift = float(shift)
        super().__init__(path, conf, post_filter=None, add_post_restore=False, skip_writer=True)
        if not self.is_valid():
            return
        self.multi_label = self._multi_label()
        self.spatial_output = self.type != InferType.CLASSIFICATION
        self.plan = U.tta_plan(self.dimension, self.flips, self.shift)  # checks flips against the dimension
        if self.method == "dropout" and not (self.network is not None and U.has_active_dropout(self.network)):
            raise ValueError(f"{path}: uncertainty_method dropout, but its network ({type(self.network).__name__}) "
                             "has no dropout layer with p > 0; use tta or auto")

    def _multi_label(self) -> bool:
        """Whether the bundle's post-processing applies a sigmoid (independent labels) rather than a softmax."""
        for key in self.const.key_postprocessing():
            if self.bundle_config.get(key):
                post = self.bundle_config.get_parsed_content(key, instantiate=True)
                for t in post.transforms if isinstance(post, Compose) else post:
                    if isinstance(t, Activationsd):
                        return any(bool(s) for s in t.sigmoid)
        return False

    def uses_dropout(self) -> bool:
        """MC dropout (else test-time augmentation) for this bundle's network."""
        has_dropout = self.network is not None and U.has_active_dropout(self.network)  # None: a TorchScript model
        return self.method == "dropout" or (self.method == "auto" and has_dropout)

    def describe(self) -> str:
        if self.uses_dropout():
            return f"MC dropout, {self.passes} passes"
        return f"test-time augmentation, {len(self.plan)} passes ({', '.join(a.describe() for a in self.plan)})"

    def post_transforms(self, data=None):
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"):
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        x = data[self.input_key]
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        x = (x[None] if convert_to_batch else x).to(torch.device(device))

        def predict(t):
            out = inferer(t, network)
            return out.as_tensor() if hasattr(out, "as_tensor") else out

        if self.uses_dropout():
            probs = U.mc_dropout_probabilities(x, network, self.passes, self.multi_label, predict=predict)
        else:
            probs = U.tta_probabilities(x, predict, self.plan, self.multi_label, self.spatial_output)
        probs = probs[0].cpu()
        score = (U.segmentation_score(probs, self.multi_label) if self.spatial_output
                 else U.classification_score(probs, self.multi_label))
        data[self.output_label_key] = probs
        data["uncertainty"] = score
        return data


class UncertaintyScoring(ScoringMethod):
    """Scores the datastore's unlabelled studies with :class:`UncertaintyInferTask` and stores each in the image info.

    Image info ``<bundle>_uncertainty``: ``{"score": entropy (nats), "model": stamp of model.pt, "method", "ts"}``, or
    ``{"error": reason, "model": stamp}`` for a study the bundle cannot read (another modality in a shared
    datastore): it is not retried until the model changes. Request keys: ``images`` (ids to score; default every
    unlabelled study), ``force`` (score current ones again), ``device``.
    """

    def __init__(self, infer_task: UncertaintyInferTask):
        super().__init__(f"Uncertainty of {infer_task.name} ({infer_task.describe()}): entropy of the mean prediction")
        self.task = infer_task
        self.key = infer_task.name + SUFFIX

    def stamp(self) -> str | None:
        return model_stamp(self.task.get_path())

    def is_current(self, info: dict, stamp: str | None = None) -> bool:
        entry = info.get(self.key) or {}
        return entry.get("model") == (stamp or self.stamp())

    def score(self, image_id: str, datastore: Datastore, device: str | None = None) -> dict:
        """Score one study now; returns (and stores) its image-info entry."""
        stamp = self.stamp()
        start = time.monotonic()
        request = {"image": datastore.get_image_uri(image_id), "logging": "error",
                   "device": device or ("cuda" if torch.cuda.is_available() else "cpu")}
        try:
            _, data = self.task(request)
            entry = {"score": float(data["uncertainty"]), "model": stamp, "method": self.task.describe(),
                     "ts": int(time.time())}
        except Exception as e:  # one unreadable study must not stop the others
            logger.warning("%s: %s cannot score %s: %s", self.key, self.task.name, image_id, e)
            entry = {"error": f"{type(e).__name__}: {e}", "model": stamp, "ts": int(time.time())}
        datastore.update_image_info(image_id, {self.key: entry})
        logger.info("%s: %s -> %s (%.2f s)", self.key, image_id, entry.get("score", entry.get("error")),
                    time.monotonic() - start)
        return entry

    def __call__(self, request, datastore: Datastore):
        start = time.monotonic()
        stamp = self.stamp()
        if stamp is None:
            logger.warning("%s: no model file %s yet; nothing scored", self.key, self.task.get_path(validate=False))
            return {"total": 0, "scored": 0, "skipped": 0, "failed": 0, "latency": 0.0}
        ids = request.get("images") or datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        force = _flag(request.get("force"), False, "scoring request 'force'")
        todo = [i for i in ids if force or not self.is_current(datastore.get_image_info(i), stamp)]
        failed = sum("error" in self.score(i, datastore, request.get("device")) for i in todo)
        self.task.clear()  # the networks cached on each device
        summary = {"total": len(ids), "scored": len(todo) - failed, "skipped": len(ids) - len(todo), "failed": failed,
                   "latency": round(time.monotonic() - start, 3)}
        logger.info("%s: %s", self.key, summary)
        return summary


class UncertaintyStrategy(Strategy):
    """The unlabelled study whose current uncertainty score is highest (:class:`UncertaintyScoring`).

    Order: studies not served by this strategy within ``reserve_s`` seconds first; among them scored studies by
    score (highest first), then unscored ones, then those the bundle cannot read; ties by id.

    Args:
        scoring: the bundle's scoring method.
        on_demand: score stale and unscored studies before choosing (else only ``/scoring`` scores them).
        reserve_s: seconds during which a study this strategy served goes after the others.
    """

    def __init__(self, scoring: UncertaintyScoring, on_demand: bool = True, reserve_s: float = 3600.0):
        super().__init__(f"Most uncertain study first for {scoring.task.name} ({scoring.task.describe()})")
        self.scoring, self.on_demand, self.reserve_s = scoring, on_demand, float(reserve_s)

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        stamp = self.scoring.stamp()
        if self.on_demand and stamp is not None:
            for i in images:
                if not self.scoring.is_current(datastore.get_image_info(i), stamp):
                    self.scoring.score(i, datastore, request.get("device"))
        now, strategy = time.time(), request.get("strategy")
        ranked = []
        for i in images:
            info = datastore.get_image_info(i)
            entry = info.get(self.scoring.key) or {}
            current = stamp is not None and entry.get("model") == stamp
            served = (info.get("strategy") or {}).get(strategy, {}).get("ts", 0)
            group = 0 if current and "score" in entry else 2 if current and "error" in entry else 1
            score = entry.get("score", 0.0) if group == 0 else 0.0
            ranked.append(((now - served) < self.reserve_s, group, -score, i))
        ranked.sort()
        best = ranked[0]
        logger.info("%s: top %s", strategy, [(r[3], -r[2]) for r in ranked[:5]])
        return {"id": best[3], "uncertainty": -best[2] if best[1] == 0 else None}


class UncertaintyAppMixin:
    """Adds uncertainty scoring methods and strategies to a MONAI Label bundle app (``self.models``: bundle name ->
    folder, ``self.conf``: the ``--conf`` values), for the bundles ``--conf uncertainty_models`` names (``all``:
    every bundle of the app with trained weights). Put it first among the app class's bases."""

    def _uncertainty_tasks(self) -> dict[str, UncertaintyScoring]:
        cached = getattr(self, "_medplugin_uncertainty", None)
        if cached is not None:
            return cached
        conf, models = self.conf, self.models
        wanted = [n.strip() for n in str(conf.get("uncertainty_models") or "").split(",") if n.strip()]
        if wanted == ["all"]:
            wanted = list(models)
        for n in wanted:
            if n not in models:
                raise ValueError(f"--conf uncertainty_models: {n!r} is not among the app's models {list(models)}")
        method = str(conf.get("uncertainty_method") or "auto").lower()
        if method not in METHODS:
            raise ValueError(f"--conf uncertainty_method: expected one of {list(METHODS)}, got {method!r}")
        passes = _number(conf, "uncertainty_passes", 8, int)
        shift = _number(conf, "uncertainty_shift", 0.05, float)
        out: dict[str, UncertaintyScoring] = {}
        for n in wanted:
            task = UncertaintyInferTask(models[n], conf, method=method, passes=passes, shift=shift)
            if not task.is_valid():
                logger.warning("%s: no trained model (models/model.pt); no uncertainty strategy for it", n)
                continue
            out[n + SUFFIX] = UncertaintyScoring(task)
            logger.info("+++ Adding uncertainty scoring and strategy:: %s%s => %s", n, SUFFIX, task.describe())
        self._medplugin_uncertainty = out
        return out

    def init_scoring_methods(self):
        methods = dict(super().init_scoring_methods() or {})
        methods.update(self._uncertainty_tasks())
        return methods

    def init_strategies(self):
        strategies = dict(super().init_strategies() or {})
        on_demand = _flag(self.conf.get("uncertainty_on_demand"), True, "--conf uncertainty_on_demand")
        reserve = _number(self.conf, "uncertainty_reserve_s", 3600.0, float)
        for name, scoring in self._uncertainty_tasks().items():
            strategies[name] = UncertaintyStrategy(scoring, on_demand=on_demand, reserve_s=reserve)
        return strategies
