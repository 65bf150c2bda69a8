"""Training and test-split evaluation of one arm's classifier, with the same budget for every arm."""

from __future__ import annotations

import numpy as np
import torch

from ..classifier import PhenoClassifier, predict, train_classifier
from ..classifier import TrainConfig as ClassifierTrainConfig
from ..fairness import bias_gap
from ..metrics import classification_scores
from ..uncertainty import (
    calibration_from_probabilities,
    choose_threshold,
    mc_dropout_predict,
    risk_coverage_curve,
    selective_accuracy,
)
from .config import ClassifierSettings

# Risk-coverage curves are stored with at most this many points (evenly spaced in coverage).
CURVE_POINTS = 200


def build_classifier(schema, settings: ClassifierSettings, *, seed: int) -> PhenoClassifier:
    kwargs = {"channels": tuple(settings.channels)} if settings.channels and settings.backbone.startswith("resnet") else {}
    return PhenoClassifier.from_schema(schema, backbone=settings.backbone, backbone_kwargs=kwargs, dropout=settings.dropout, seed=seed)


def train_arm_classifier(schema, train_data, settings: ClassifierSettings, *, lambda_bias: float, seed: int) -> tuple[PhenoClassifier, dict]:
    """Train one arm's classifier; every arm uses the same backbone, epochs, batch size and learning rate."""
    model = build_classifier(schema, settings, seed=seed)
    config = ClassifierTrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                   lambda_bias=lambda_bias, seed=seed, progress=False)
    history = train_classifier(model, train_data, config=config)
    return model, {"lambda_bias": lambda_bias, "train_images": len(train_data), "history": history.epochs}


def _thin_curve(coverage: np.ndarray, risk: np.ndarray) -> dict:
    if coverage.size > CURVE_POINTS:
        index = np.unique(np.linspace(0, coverage.size - 1, CURVE_POINTS).round().astype(int))
        coverage, risk = coverage[index], risk[index]
    return {"coverage": coverage.tolist(), "risk": risk.tolist()}


def evaluate_arm(model: PhenoClassifier, val_data, test_data, settings: ClassifierSettings, *, seed: int,
                 min_group_size: int) -> dict:
    """Return every test-split number of one classifier.

    Accuracy is per image (the argmax class, or the fraction of labels right at 0.5 for multi-label data)
    averaged over images. The deferral threshold tau is chosen on the validation split for the target
    coverage from MC-dropout uncertainty, then applied to the test split.
    """
    outputs = predict(model, test_data)
    multi_label = outputs.multi_label
    references = (outputs.targets.long() if multi_label else outputs.targets).numpy()
    hard = outputs.hard_predictions().numpy()
    names = outputs.group_name_list()
    gap = bias_gap(hard, references, names, min_group_size=min_group_size)
    correct = hard == references
    accuracy = float((correct.mean(axis=1) if correct.ndim == 2 else correct).mean())
    schema_vocabulary = list(test_data.schema.pathology.vocabulary)
    scores = classification_scores(outputs.probabilities.numpy(), references, class_names=schema_vocabulary)
    calibration = calibration_from_probabilities(outputs.probabilities, outputs.targets, multi_label=multi_label,
                                                 num_bins=settings.ece_bins)

    mc_val = mc_dropout_predict(model, val_data, num_passes=settings.mc_passes, seed=seed)
    threshold = choose_threshold(mc_val.uncertainty(), 1.0 - mc_val.correctness(), target_coverage=settings.target_coverage)
    mc_test = mc_dropout_predict(model, test_data, num_passes=settings.mc_passes, seed=seed)
    uncertainty, correctness = mc_test.uncertainty(), mc_test.correctness()
    selective = selective_accuracy(uncertainty, correctness, threshold.tau)
    curve = risk_coverage_curve(uncertainty, 1.0 - correctness)
    mc_calibration = calibration_from_probabilities(mc_test.mean, mc_test.targets, multi_label=multi_label, num_bins=settings.ece_bins)

    return {
        "accuracy": accuracy,
        "macro_f1": scores["macro_f1"],
        "macro_auroc": scores["macro_auroc"],
        "auroc_per_class": scores["auroc_per_class"],
        "bias_gap_percent": 100 * gap.gap,
        "group_accuracy": gap.group_accuracy,
        "group_size": gap.group_size,
        "worst_group": gap.worst_group,
        "worst_group_accuracy": gap.worst_accuracy,
        "small_groups": gap.small_groups,
        "ece": calibration.ece,
        "ece_mc_dropout": mc_calibration.ece,
        "reliability": calibration.to_dict(),
        "deferral": {**selective, "tau_from_validation": threshold.to_dict(), "target_coverage": settings.target_coverage},
        "aurc": curve.aurc,
        "risk_coverage": _thin_curve(curve.coverage, curve.risk),
        "test_images": len(test_data),
    }


def classifier_features(model: PhenoClassifier, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Penultimate features of (N, C, H, W) images in [0, 1] (dropout off)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0)
