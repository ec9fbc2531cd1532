"""The input gate: is an input what the model was made for, before its probabilities are trusted?

Three checks, each giving reasons in words that name the tag or property and the value:

- DICOM header rules a bundle declares (:class:`ScopeSpec`, a YAML mapping): e.g. the chest classifier takes
  Modality CR/DX, Body Part Examined CHEST, View Position PA/AP (``"ViewPosition is LL, expected PA or AP"``);
- content rules for every input: spatial dimensions, colour or grayscale, channels, intensity range, size;
- an out-of-distribution score on the network's pooled features (:class:`MahalanobisOOD`, Lee et al. 2018),
  captured by :class:`PooledFeatures`, its threshold the 99th percentile of validation images.

:class:`InputGate` combines them into a :class:`GateResult` (``in_scope``, ``out_of_scope_reason``); the policy
``gate: warn | refuse`` decides whether an out-of-scope input still gets probabilities. A package of its own (not
``medplugin.transforms``/``handlers``) because the header and content rules and the OOD statistics are used by
several callers (inference handlers, the DICOM SR writer, MONAI Label's answer, the end of training) and the
header rules need neither torch nor MONAI.
"""

from medplugin.gate.features import PooledFeatures, collect_features, fit_ood_statistics, pooled_layer
from medplugin.gate.gate import GATE_POLICIES, GateResult, InputGate
from medplugin.gate.inputs import load_for_gate
from medplugin.gate.ood import MahalanobisOOD
from medplugin.gate.spec import HeaderRule, ScopeSpec, check_file_shape, check_header, check_image, read_header
from medplugin.gate.transforms import ScopeCheck, ScopeCheckd

__all__ = [
    "GATE_POLICIES",
    "GateResult",
    "HeaderRule",
    "InputGate",
    "MahalanobisOOD",
    "PooledFeatures",
    "ScopeCheck",
    "ScopeCheckd",
    "ScopeSpec",
    "check_file_shape",
    "check_header",
    "check_image",
    "collect_features",
    "fit_ood_statistics",
    "load_for_gate",
    "pooled_layer",
    "read_header",
]
