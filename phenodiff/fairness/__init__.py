"""Fairness across demographic groups: the bias gap, its soft surrogate and the loss L_diag = L_task + lambda_b * Bias_soft."""

from .bias import (
    BiasGapReport,
    bias_gap,
    diagnostic_loss,
    group_means,
    hard_accuracy,
    mean_absolute_deviation,
    soft_accuracy,
    soft_bias,
)

__all__ = [
    "BiasGapReport",
    "bias_gap",
    "diagnostic_loss",
    "group_means",
    "hard_accuracy",
    "mean_absolute_deviation",
    "soft_accuracy",
    "soft_bias",
]
