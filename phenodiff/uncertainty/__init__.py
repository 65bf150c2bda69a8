"""Uncertainty-aware diagnosis: MC-dropout predictions, deferral thresholds, risk-coverage curves and calibration."""

from .calibration import (
    DEFAULT_NUM_BINS,
    CalibrationResult,
    calibration_from_probabilities,
    confidences_and_correctness,
    expected_calibration_error,
    fit_temperature,
    save_reliability_diagram,
)
from .deferral import (
    RiskCoverageCurve,
    ThresholdChoice,
    choose_threshold,
    defer_mask,
    risk_coverage_curve,
    selective_accuracy,
)
from .mc_dropout import DEFAULT_NUM_PASSES, MCDropoutPrediction, mc_dropout_predict

__all__ = [
    "DEFAULT_NUM_BINS",
    "DEFAULT_NUM_PASSES",
    "CalibrationResult",
    "MCDropoutPrediction",
    "RiskCoverageCurve",
    "ThresholdChoice",
    "calibration_from_probabilities",
    "choose_threshold",
    "confidences_and_correctness",
    "defer_mask",
    "expected_calibration_error",
    "fit_temperature",
    "mc_dropout_predict",
    "risk_coverage_curve",
    "save_reliability_diagram",
    "selective_accuracy",
]
