"""Temperature scaling of a classifier's logits with the temperature stored beside the trained weights.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the logits by a
temperature T fitted on the validation set (``model.json``'s ``temperature``, written at the end of training):
one T for a softmax model, one per finding for a multi-label (sigmoid) model. Put it before the activation in
a bundle's post-processing, so the probabilities it reports, thresholds and writes are the calibrated ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from medplugin.metrics.stored import stored_temperature

__all__ = ["Temperature"]

logger = logging.getLogger(__name__)


class Temperature(Transform):
    """Divide channel-first logits ``(C, ...)`` by the model's temperature (one, or one per channel).

    The temperature is read from ``model_json`` when first needed and read again whenever that file changes (a
    MONAI Label server keeps this transform across trainings), or given as ``temperature``. A ``model.json``
    without one gives 1 (logged once): the logits pass unchanged.

    Args:
        model_json: the trained model's ``model.json``.
        temperature: a fixed temperature (one number or one per channel) instead of ``model_json``'s.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, model_json: str | os.PathLike | None = None,
                 temperature: float | list[float] | None = None) -> None:
        if model_json is None and temperature is None:
            raise ValueError("Temperature needs model_json (the trained model's model.json) or a temperature.")
        self.model_json = None if model_json is None else Path(model_json)
        self.fixed = None if temperature is None else stored_temperature({"temperature": temperature})
        self._stamp: tuple | None = None
        self._value: float | list[float] = 1.0

    def value(self) -> float | list[float]:
        """The temperature in use (re-read when ``model_json`` changed)."""
        if self.fixed is not None:
            return self.fixed
        try:
            st = self.model_json.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self._value = stored_temperature(self.model_json)
            if self._value == 1.0:
                logger.info("%s stores no temperature: probabilities are not temperature-scaled", self.model_json)
        return self._value

    def __call__(self, logits: NdarrayOrTensor) -> torch.Tensor:
        x = torch.as_tensor(logits)
        t = torch.as_tensor(self.value(), dtype=torch.float32 if not x.is_floating_point() else x.dtype,
                            device=x.device).reshape(-1)
        if t.numel() == 1:
            return x / t[0]
        if x.ndim == 0 or x.shape[0] != t.numel():
            raise ValueError(f"{t.numel()} temperatures (one per finding, {self.model_json}) but the logits have "
                             f"shape {tuple(x.shape)} (channel first).")
        return x / t.reshape(-1, *([1] * (x.ndim - 1)))
