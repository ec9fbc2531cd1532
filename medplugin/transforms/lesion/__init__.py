"""Fundus lesion candidates (radial symmetry + Tsallis threshold), drawn or stacked; the fundus preprocessing."""

from medplugin.transforms.lesion.array import AnnotateCandidates, LesionCandidates, estimate_disc_and_fovea
from medplugin.transforms.lesion.dictionary import AnnotateCandidatesd, FundusPreprocessd, LesionCandidatesd

__all__ = ["AnnotateCandidates", "AnnotateCandidatesd", "FundusPreprocessd", "LesionCandidates", "LesionCandidatesd",
           "estimate_disc_and_fovea"]
