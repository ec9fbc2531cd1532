"""Ignite/MONAI handlers: checkpoints with metadata, TensorBoard CAMs, evaluation reports."""

from medplugin.handlers.checkpoint import BestModelSaver, ModelLoader, patient_digest
from medplugin.handlers.gpu import GPUStatsLogger
from medplugin.handlers.grading import GradingReportWriter
from medplugin.handlers.hparams import HParamsLogger
from medplugin.handlers.lungseg import LungMaskWriter, Segmentation2dReportWriter, TensorBoardMaskHandler
from medplugin.handlers.multilabel import (
    LocalizationEvaluator,
    MultiLabelCAMSaver,
    MultiLabelPredictionWriter,
    MultiLabelReportWriter,
)
from medplugin.handlers.progress import ProgressBar
from medplugin.handlers.reports import CAMOverlaySaver, ClassificationReportWriter, PredictionWriter
from medplugin.handlers.resume import TrainingCheckpoint
from medplugin.handlers.segmentation import SegmentationReportWriter, SegmentationWriter, TensorBoardSliceHandler
from medplugin.handlers.tensorboard import LearningRateLogger, TensorBoardCAMHandler
from medplugin.handlers.volume_cam import TensorBoardConfusionMatrix, TensorBoardVolumeCAMHandler, VolumeCAMSaver

__all__ = [
    "LocalizationEvaluator",
    "MultiLabelCAMSaver",
    "MultiLabelPredictionWriter",
    "MultiLabelReportWriter",
    "BestModelSaver",
    "CAMOverlaySaver",
    "ClassificationReportWriter",
    "GPUStatsLogger",
    "GradingReportWriter",
    "HParamsLogger",
    "LearningRateLogger",
    "LungMaskWriter",
    "ModelLoader",
    "PredictionWriter",
    "ProgressBar",
    "Segmentation2dReportWriter",
    "SegmentationReportWriter",
    "SegmentationWriter",
    "TensorBoardCAMHandler",
    "TensorBoardMaskHandler",
    "TensorBoardSliceHandler",
    "TrainingCheckpoint",
    "TensorBoardConfusionMatrix",
    "TensorBoardVolumeCAMHandler",
    "VolumeCAMSaver",
    "patient_digest",
]
