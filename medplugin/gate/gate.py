"""The input gate: header, content and out-of-distribution checks combined into ``in_scope`` and a reason."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medplugin.gate.ood import MahalanobisOOD
from medplugin.gate.spec import ScopeSpec, check_file_shape, check_header, check_image, read_header

__all__ = ["GATE_POLICIES", "GateResult", "InputGate"]

logger = logging.getLogger(__name__)

GATE_POLICIES = ("warn", "refuse")


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one input.

    Attributes:
        reasons: every failed check, in words naming the tag or property and the value.
        ood_score: the out-of-distribution score, when features were checked.
        refused: out of scope under ``gate: refuse``: no probabilities may be given.
    """

    reasons: tuple[str, ...] = ()
    ood_score: float | None = None
    refused: bool = False
    policy: str = field(default="warn", repr=False)

    @property
    def in_scope(self) -> bool:
        """No check failed."""
        return not self.reasons

    @property
    def out_of_scope_reason(self) -> str:
        """The reasons joined with ``"; "`` (empty when in scope): the CSV column and the SR comment."""
        return "; ".join(self.reasons)

    def merge(self, other: GateResult) -> GateResult:
        """Both results' reasons (e.g. the header/content checks before the network and the OOD check after)."""
        reasons = self.reasons + tuple(r for r in other.reasons if r not in self.reasons)
        score = other.ood_score if other.ood_score is not None else self.ood_score
        return GateResult(reasons, score, bool(reasons) and self.policy == "refuse", self.policy)

    def as_row(self) -> dict[str, Any]:
        """``{"in_scope": bool, "out_of_scope_reason": str}`` for a predictions table."""
        return {"in_scope": self.in_scope, "out_of_scope_reason": self.out_of_scope_reason}


class InputGate:
    """Decide whether an input is what the model was made for, before its probabilities are trusted.

    Args:
        spec: the declared scope (:class:`ScopeSpec`, or its config mapping).
        ood: out-of-distribution statistics, or ``None`` (no OOD check); without a threshold (fewer validation
            images than :meth:`MahalanobisOOD.calibrate` needs) their scores are reported and flag nothing.
        policy: ``"warn"`` (out-of-scope inputs still get probabilities, flagged) or ``"refuse"`` (they get none).

    Example::

        gate = InputGate.from_config(config["scope"], policy="warn", model_json=meta, model_dir="models")
        result = gate.check(header=read_header(path), image=loaded)        # before the network
        result = result.merge(gate.check(features=pooled))                  # after it
    """

    def __init__(self, spec: ScopeSpec | Mapping[str, Any] | None = None, ood: MahalanobisOOD | None = None,
                 policy: str = "warn") -> None:
        if policy not in GATE_POLICIES:
            raise ValueError(f"gate policy must be one of {GATE_POLICIES}, got {policy!r}.")
        self.spec = spec if isinstance(spec, ScopeSpec) else ScopeSpec.from_config(spec)
        if ood is not None and ood.threshold is None:  # too few validation images: scores only (see calibrate)
            logger.warning("the OOD statistics have no threshold (%s): out-of-distribution scores are reported, "
                           "not used to flag inputs", ood.threshold_note or "not calibrated")
        self.ood = ood
        self.policy = policy

    @classmethod
    def from_config(cls, scope: Mapping[str, Any] | None, policy: str = "warn",
                    model_json: Mapping[str, Any] | None = None,
                    model_dir: str | os.PathLike | None = None) -> InputGate:
        """Build from a config's ``scope`` mapping and, when ``model_json`` has an ``"ood"`` block, the OOD
        statistics stored beside it in ``model_dir``."""
        ood = None
        block = (model_json or {}).get("ood")
        if block:
            if model_dir is None:
                raise ValueError("model.json has OOD statistics: give model_dir, the folder holding them.")
            ood = MahalanobisOOD.load(block, model_dir)
        return cls(scope, ood, policy)

    def _result(self, reasons: Sequence[str], score: float | None = None) -> GateResult:
        reasons = tuple(reasons)
        return GateResult(reasons, score, bool(reasons) and self.policy == "refuse", self.policy)

    def check(self, header: Any = None, image: Any = None, features: Any = None) -> GateResult:
        """Check one input; each part is optional.

        Args:
            header: its DICOM header (a pydicom dataset), ``None`` for other files.
            image: the loaded image, channel-first, before intensity normalisation.
            features: its pooled features ``(F,)`` (needs OOD statistics).

        Returns:
            the verdict; its reasons list header failures first, then content, then the OOD score.
        """
        reasons = check_header(header, self.spec)
        if image is not None:
            reasons += check_image(image, self.spec)
        score = None
        if features is not None and self.ood is not None:
            score = float(self.ood.score(np.asarray(features).reshape(1, -1))[0])
            if self.ood.threshold is not None and score > self.ood.threshold:
                pct = f"{self.ood.percentile:g}th percentile of validation images" if self.ood.percentile else ""
                reasons.append(f"out-of-distribution score {score:.1f} above the threshold {self.ood.threshold:.1f}"
                               f"{f' ({pct})' if pct else ''}: unlike the training images")
        result = self._result(reasons, score)
        if not result.in_scope:
            logger.debug("input out of scope: %s", result.out_of_scope_reason)
        return result

    def check_file(self, path: str | os.PathLike, image: Any = None) -> GateResult:
        """:meth:`check` with the header read from ``path`` when it is DICOM (a folder: its first DICOM file).
        Without ``image`` (it could not be loaded) the file's own header still tells a volume from an image
        (:func:`check_file_shape`)."""
        header = read_header(path)
        result = self.check(header=header, image=image)
        if image is None:
            extra = check_file_shape(path, self.spec, header)
            if extra:
                result = result.merge(self._result(extra))
        return result

    def check_features(self, features: Any) -> list[GateResult]:
        """The OOD verdict for a batch of pooled features ``(B, F)`` (empty reasons without statistics)."""
        feats = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
        return [self.check(features=f) for f in feats.reshape(len(feats), -1)]
