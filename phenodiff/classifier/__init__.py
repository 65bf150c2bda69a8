"""The diagnostic classifier: a timm trunk with a dropout head, its training with the fairness penalty, and predictions."""

from .data import SyntheticImageDataset, with_synthetic
from .model import SUPPORTED_BACKBONES, TASKS, PhenoClassifier, task_from_schema
from .predict import Predictions, make_loader, predict
from .train import TrainConfig, TrainHistory, evaluate_classifier, train_classifier

__all__ = [
    "PhenoClassifier",
    "Predictions",
    "SUPPORTED_BACKBONES",
    "SyntheticImageDataset",
    "TASKS",
    "TrainConfig",
    "TrainHistory",
    "evaluate_classifier",
    "make_loader",
    "predict",
    "task_from_schema",
    "train_classifier",
    "with_synthetic",
]
