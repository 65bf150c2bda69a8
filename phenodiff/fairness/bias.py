"""The bias gap between demographic groups, and its differentiable surrogate for training.

With G the demographic groups and Acc_g the accuracy on group g,

    Bias = (1/|G|) sum_g | Acc_g - (1/|G|) sum_g' Acc_g' |,

the mean absolute deviation of the group accuracies from their unweighted mean (a fraction; multiply by
100 for percent). Training uses

    L_diag = L_task + lambda_b * Bias_soft,

where Bias_soft replaces Acc_g by the group's soft accuracy: the mean probability that the model gives to
the true class. For a multi-label task a sample's soft accuracy is the mean over labels of the probability
of the true value, (1/L) sum_l [y_l p_l + (1 - y_l)(1 - p_l)]. Its hard accuracy is the fraction of labels
predicted correctly at threshold 0.5. Only groups present in the batch enter Bias_soft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


def _check_task_inputs(probabilities: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> None:
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C), got {tuple(probabilities.shape)}.")
    if multi_label and targets.shape != probabilities.shape:
        raise ValueError(
            f"multi-label targets must have the shape of probabilities {tuple(probabilities.shape)}, got {tuple(targets.shape)}."
        )
    if not multi_label and (targets.ndim != 1 or targets.shape[0] != probabilities.shape[0]):
        raise ValueError(
            f"single-label targets must have shape ({probabilities.shape[0]},) with class indices, got {tuple(targets.shape)}."
        )


def soft_accuracy(probabilities: torch.Tensor, targets: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Return each sample's probability of its true class, shape (N,).

    Args:
        probabilities: (N, C) softmax outputs (single-label) or (N, L) sigmoid outputs (multi-label).
        targets: (N,) class indices, or (N, L) multi-hot labels.
        multi_label: Selects the multi-label form, the mean over labels of the probability of the true value.
    """
    _check_task_inputs(probabilities, targets, multi_label)
    if multi_label:
        targets = targets.to(probabilities.dtype)
        return (targets * probabilities + (1 - targets) * (1 - probabilities)).mean(dim=1)
    return probabilities.gather(1, targets.long()[:, None])[:, 0]


def hard_accuracy(probabilities: torch.Tensor, targets: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Return each sample's accuracy, shape (N,): 1/0 for argmax (single-label), the fraction of labels
    right at threshold 0.5 (multi-label)."""
    _check_task_inputs(probabilities, targets, multi_label)
    if multi_label:
        return ((probabilities >= 0.5) == (targets >= 0.5)).to(probabilities.dtype).mean(dim=1)
    return (probabilities.argmax(dim=1) == targets.long()).to(probabilities.dtype)


def group_means(values: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average ``values`` (N,) within each group present in ``groups`` (N,) of integer ids.

    Returns:
        ``(group_ids, means, counts)``, each (G,) over the G groups present, sorted by id. ``means`` is
        differentiable with respect to ``values``.
    """
    if values.ndim != 1 or groups.shape != values.shape:
        raise ValueError(f"values and groups must both have shape (N,), got {tuple(values.shape)} and {tuple(groups.shape)}.")
    group_ids, inverse, counts = torch.unique(groups, sorted=True, return_inverse=True, return_counts=True)
    sums = torch.zeros(group_ids.numel(), dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    return group_ids, sums / counts.to(values.dtype), counts


def mean_absolute_deviation(group_accuracies: torch.Tensor) -> torch.Tensor:
    """Return (1/|G|) sum_g |Acc_g - mean_g Acc_g| for a (G,) tensor; 0 for a single group."""
    return (group_accuracies - group_accuracies.mean()).abs().mean()


def soft_bias(probabilities: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Return Bias_soft over the groups present in the batch, a differentiable 0-dim tensor."""
    _, group_soft_accuracy, _ = group_means(soft_accuracy(probabilities, targets, multi_label=multi_label), groups)
    return mean_absolute_deviation(group_soft_accuracy)


def diagnostic_loss(
    task_loss: torch.Tensor,
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    *,
    multi_label: bool,
    lambda_bias: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(L_diag, Bias_soft)`` with L_diag = L_task + lambda_b * Bias_soft.

    Args:
        task_loss: 0-dim task loss (cross-entropy or binary cross-entropy).
        probabilities: (N, C) model probabilities for the same batch.
        targets: (N,) class indices or (N, L) multi-hot labels.
        groups: (N,) integer group ids.
        lambda_bias: lambda_b >= 0. With 0 the penalty is still returned for logging.
    """
    if lambda_bias < 0:
        raise ValueError(f"Invalid lambda_bias {lambda_bias}: it must be >= 0.")
    penalty = soft_bias(probabilities, targets, groups, multi_label=multi_label)
    return task_loss + lambda_bias * penalty, penalty


@dataclass
class BiasGapReport:
    """Hard accuracies per group and the bias gap.

    Attributes:
        group_accuracy: Group name to accuracy (fraction).
        group_size: Group name to number of samples.
        gap: Bias over the included groups, a fraction.
        worst_group: The group with the lowest accuracy among the included groups.
        worst_accuracy: Its accuracy.
        small_groups: Groups with fewer than ``min_group_size`` samples, whose accuracy is unreliable.
        excluded_groups: Groups left out of ``gap`` and ``worst_group`` (the small ones when
            ``exclude_small_groups`` was set, else none).
        min_group_size: The size threshold used for ``small_groups``.
    """

    group_accuracy: dict[str, float]
    group_size: dict[str, int]
    gap: float
    worst_group: str
    worst_accuracy: float
    small_groups: list[str] = field(default_factory=list)
    excluded_groups: list[str] = field(default_factory=list)
    min_group_size: int = 1

    def to_dict(self) -> dict:
        return {
            "group_accuracy": dict(self.group_accuracy),
            "group_size": dict(self.group_size),
            "gap": self.gap,
            "gap_percent": 100.0 * self.gap,
            "worst_group": self.worst_group,
            "worst_accuracy": self.worst_accuracy,
            "small_groups": list(self.small_groups),
            "excluded_groups": list(self.excluded_groups),
            "min_group_size": self.min_group_size,
        }


def bias_gap(
    predictions: np.ndarray | Sequence,
    references: np.ndarray | Sequence,
    groups: np.ndarray | Sequence,
    *,
    min_group_size: int = 1,
    exclude_small_groups: bool = False,
) -> BiasGapReport:
    """Compute per-group accuracies and the bias gap from hard predictions.

    Args:
        predictions: (N,) predicted class indices, or (N, L) 0/1 predictions for a multi-label task.
        references: True labels of the same shape.
        groups: (N,) group names (or ids, turned into strings).
        min_group_size: Groups smaller than this are listed in ``small_groups``.
        exclude_small_groups: Leave the small groups out of the gap and the worst group.

    Raises:
        ValueError: shapes differ, the input is empty, or every group is excluded.
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    names = np.asarray([str(g) for g in groups], dtype=object)
    if predictions.shape != references.shape or predictions.ndim not in (1, 2):
        raise ValueError(
            f"predictions and references must have the same shape, (N,) or (N, L); got {predictions.shape} and {references.shape}."
        )
    if predictions.shape[0] == 0 or names.shape[0] != predictions.shape[0]:
        raise ValueError(f"Expected one group per sample and at least one sample; got {predictions.shape[0]} samples and {names.shape[0]} groups.")
    if min_group_size < 1:
        raise ValueError(f"Invalid min_group_size {min_group_size}: it must be at least 1.")

    correct = (predictions == references).astype(np.float64)
    if correct.ndim == 2:
        correct = correct.mean(axis=1)
    accuracy: dict[str, float] = {}
    size: dict[str, int] = {}
    for name in sorted(set(names.tolist())):
        mask = names == name
        accuracy[name] = float(correct[mask].mean())
        size[name] = int(mask.sum())
    small = [name for name in accuracy if size[name] < min_group_size]
    excluded = small if exclude_small_groups else []
    included = [name for name in accuracy if name not in excluded]
    if not included:
        raise ValueError(f"Every group has fewer than {min_group_size} samples, so none is left for the gap: {size}.")
    values = np.array([accuracy[name] for name in included])
    worst = included[int(np.argmin(values))]
    return BiasGapReport(
        group_accuracy=accuracy,
        group_size=size,
        gap=float(np.abs(values - values.mean()).mean()),
        worst_group=worst,
        worst_accuracy=accuracy[worst],
        small_groups=small,
        excluded_groups=excluded,
        min_group_size=min_group_size,
    )
