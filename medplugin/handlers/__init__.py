"""Ignite/MONAI handlers: checkpoints with metadata, TensorBoard CAMs, evaluation reports."""

from medplugin.handlers.checkpoint import BestModelSaver, ModelLoader
from medplugin.handlers.progress import ProgressBar
from medplugin.handlers.reports import CAMOverlaySaver, ClassificationReportWriter, PredictionWriter
from medplugin.handlers.tensorboard import LearningRateLogger, TensorBoardCAMHandler

__all__ = [
    "BestModelSaver",
    "CAMOverlaySaver",
    "ClassificationReportWriter",
    "LearningRateLogger",
    "ModelLoader",
    "PredictionWriter",
    "ProgressBar",
    "TensorBoardCAMHandler",
]
