"""Deferral to a human: the threshold tau on the uncertainty score, and the risk-coverage curve.

An image is kept (the model decides) when its score s(x) <= tau and deferred when s(x) > tau. With l_i the
loss of image i (1 - its accuracy), the coverage of tau is the kept fraction and its selective risk is the
mean loss over the kept images. Sorting the scores in increasing order gives the risk-coverage curve, and

    AURC = sum_j (c_j - c_(j-1)) * r_j

over the distinct scores, with c_j and r_j the coverage and risk when every image with a score up to the
j-th distinct score is kept. Without ties this is (1/N) sum_k r(k/N), the mean risk over the coverages
1/N, ..., N/N. Tied scores are kept or deferred together, as the threshold rule does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


def _as_vector(values, argument: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{argument} must be a non-empty 1-D array, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{argument} contains NaN or infinite values.")
    return array


def _paired_vectors(scores, values, argument: str) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_vector(scores, "scores")
    values = _as_vector(values, argument)
    if scores.shape != values.shape:
        raise ValueError(f"scores and {argument} must have the same length, got {scores.size} and {values.size}.")
    return scores, values


@dataclass(frozen=True)
class RiskCoverageCurve:
    """The risk-coverage curve at each distinct score, in increasing order of the threshold.

    Attributes:
        thresholds: (K,) the distinct scores; keeping ``score <= thresholds[j]`` gives point j.
        coverage: (K,) fraction of images kept.
        risk: (K,) mean loss of the kept images.
        aurc: Area under the curve (see the module docstring).
    """

    thresholds: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    aurc: float


def risk_coverage_curve(scores, losses) -> RiskCoverageCurve:
    """Compute the risk-coverage curve and AURC.

    Args:
        scores: (N,) uncertainty scores; higher means less certain.
        losses: (N,) per-image losses in [0, 1], for example ``1 - MCDropoutPrediction.correctness()``.
    """
    scores, losses = _paired_vectors(scores, losses, "losses")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    cumulative_loss = np.cumsum(losses[order])
    # The last index of each run of equal scores: all tied images are kept together.
    last_of_run = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    kept_counts = last_of_run + 1
    coverage = kept_counts / scores.size
    risk = cumulative_loss[last_of_run] / kept_counts
    aurc = float(np.sum(np.diff(np.r_[0.0, coverage]) * risk))
    return RiskCoverageCurve(thresholds=sorted_scores[last_of_run], coverage=coverage, risk=risk, aurc=aurc)


@dataclass(frozen=True)
class ThresholdChoice:
    """A deferral threshold and what it achieved on the data it was chosen on.

    Attributes:
        tau: Keep an image when its score <= tau. ``-inf`` defers every image (no threshold met the target).
        coverage: Fraction kept.
        risk: Mean loss of the kept images (NaN when none is kept).
        target: ``coverage`` or ``risk``.
        target_value: The requested coverage or risk.
        feasible: False when no threshold meets the target.
    """

    tau: float
    coverage: float
    risk: float
    target: str
    target_value: float
    feasible: bool

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(scores, losses, *, target_coverage: float | None = None, target_risk: float | None = None) -> ThresholdChoice:
    """Choose tau on validation data for a target coverage or a target risk (give exactly one).

    - ``target_coverage`` c: the smallest distinct score whose coverage is at least c, so at least a
      fraction c of the images is kept (more when scores tie).
    - ``target_risk`` r: the threshold with the largest coverage whose selective risk is at most r.
      When even the most certain images exceed r, tau is ``-inf`` and ``feasible`` is false.
    """
    if (target_coverage is None) == (target_risk is None):
        raise ValueError("Give exactly one of target_coverage and target_risk.")
    curve = risk_coverage_curve(scores, losses)
    if target_coverage is not None:
        if not 0.0 < target_coverage <= 1.0:
            raise ValueError(f"Invalid target_coverage {target_coverage}: it must be in (0, 1].")
        # Compare with a small tolerance so that a coverage of exactly k/N is not missed by rounding.
        index = int(np.flatnonzero(curve.coverage >= target_coverage - 1e-12)[0])
        return ThresholdChoice(
            tau=float(curve.thresholds[index]),
            coverage=float(curve.coverage[index]),
            risk=float(curve.risk[index]),
            target="coverage",
            target_value=float(target_coverage),
            feasible=True,
        )
    if not 0.0 <= target_risk <= 1.0:
        raise ValueError(f"Invalid target_risk {target_risk}: it must be in [0, 1].")
    meets = np.flatnonzero(curve.risk <= target_risk + 1e-12)
    if meets.size == 0:
        return ThresholdChoice(
            tau=-math.inf, coverage=0.0, risk=math.nan, target="risk", target_value=float(target_risk), feasible=False
        )
    index = int(meets[-1])
    return ThresholdChoice(
        tau=float(curve.thresholds[index]),
        coverage=float(curve.coverage[index]),
        risk=float(curve.risk[index]),
        target="risk",
        target_value=float(target_risk),
        feasible=True,
    )


def defer_mask(scores, tau: float) -> np.ndarray:
    """Return a bool (N,) array, true where the image is deferred (score > tau)."""
    return _as_vector(scores, "scores") > tau


def selective_accuracy(scores, correctness, tau: float) -> dict:
    """Report coverage, accuracy on the kept images and overall accuracy at threshold tau.

    Args:
        scores: (N,) uncertainty scores.
        correctness: (N,) per-image accuracy in [0, 1].
        tau: The deferral threshold.

    Returns:
        ``{"tau", "coverage", "kept", "deferred", "accuracy_kept", "accuracy_overall"}``; ``accuracy_kept``
        is NaN when every image is deferred.
    """
    scores, correctness = _paired_vectors(scores, correctness, "correctness")
    deferred_mask = scores > tau
    kept_mask = ~deferred_mask
    return {
        "tau": float(tau),
        "coverage": float(kept_mask.mean()),
        "kept": int(kept_mask.sum()),
        "deferred": int(deferred_mask.sum()),
        "accuracy_kept": float(correctness[kept_mask].mean()) if kept_mask.any() else math.nan,
        "accuracy_overall": float(correctness.mean()),
    }
