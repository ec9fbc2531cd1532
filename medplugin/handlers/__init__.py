"""Ignite/MONAI handlers: checkpoints with metadata, TensorBoard images, CAMs, segmentation and evaluation reports,
the input gate and DICOM results."""

from medplugin.handlers.cam import CAMSaver, TensorBoardCAMHandler
from medplugin.handlers.checkpoint import BestModelSaver, ModelLoader, ValidationStatistics, patient_digest
from medplugin.handlers.dicom import DicomResultWriter, DicomSegmentationWriter
from medplugin.handlers.gate import InputGateHandler, OODStatisticsFitter
from medplugin.handlers.gpu import GPUStatsLogger
from medplugin.handlers.grading import GradingReportWriter
from medplugin.handlers.hparams import HParamsLogger
from medplugin.handlers.multilabel import LocalizationEvaluator, MultiLabelPredictionWriter, MultiLabelReportWriter
from medplugin.handlers.panels import TensorBoardMaskHandler, TensorBoardPanelHandler
from medplugin.handlers.progress import ProgressBar
from medplugin.handlers.reports import ClassificationReportWriter, PredictionWriter
from medplugin.handlers.resume import TrainingCheckpoint
from medplugin.handlers.segmentation import SegmentationReportWriter, SegmentationWriter
from medplugin.handlers.streaming import InferenceProgress, StreamingPredictions, pending_inputs
from medplugin.handlers.tensorboard import LearningRateLogger, TensorBoardConfusionMatrix

__all__ = [
    "BestModelSaver",
    "CAMSaver",
    "ClassificationReportWriter",
    "DicomResultWriter",
    "DicomSegmentationWriter",
    "GPUStatsLogger",
    "GradingReportWriter",
    "HParamsLogger",
    "InferenceProgress",
    "InputGateHandler",
    "LearningRateLogger",
    "LocalizationEvaluator",
    "ModelLoader",
    "MultiLabelPredictionWriter",
    "MultiLabelReportWriter",
    "OODStatisticsFitter",
    "PredictionWriter",
    "ProgressBar",
    "SegmentationReportWriter",
    "SegmentationWriter",
    "StreamingPredictions",
    "TensorBoardCAMHandler",
    "TensorBoardConfusionMatrix",
    "TensorBoardMaskHandler",
    "TensorBoardPanelHandler",
    "TrainingCheckpoint",
    "ValidationStatistics",
    "patient_digest",
    "pending_inputs",
]
