"""Calibration: expected calibration error, reliability diagrams and temperature scaling.

The ECE with M equal-width confidence bins B_m = ((m-1)/M, m/M] (the first bin also contains 0) is

    ECE = sum_m (|B_m| / n) * | acc(B_m) - conf(B_m) |,

with acc and conf the mean correctness and mean confidence of the predictions in the bin (Guo et al., 2017,
"On calibration of modern neural networks", ICML). M is 15 unless configured. For a single-label task a
prediction is an image: confidence max_c p_c, correct when the argmax is the label. For a multi-label task
every (image, label) pair is a binary prediction: confidence max(p, 1 - p), correct when the 0.5-threshold
decision equals the label. Binary confidences are at least 0.5, so the bins below 0.5 stay empty.

Temperature scaling divides the logits by one scalar T > 0, fitted by minimising the negative
log-likelihood on the validation split (Guo et al., 2017).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_write_bytes

DEFAULT_NUM_BINS = 15


@dataclass(frozen=True)
class CalibrationResult:
    """ECE and the per-bin statistics behind it.

    Attributes:
        ece: Expected calibration error, a fraction in [0, 1].
        num_bins: M.
        bin_edges: (M + 1,) edges 0, 1/M, ..., 1.
        bin_count: (M,) predictions per bin.
        bin_confidence: (M,) mean confidence per bin, NaN for empty bins.
        bin_accuracy: (M,) mean correctness per bin, NaN for empty bins.
        num_predictions: n, the number of predictions binned.
    """

    ece: float
    num_bins: int
    bin_edges: np.ndarray
    bin_count: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    num_predictions: int

    def to_dict(self) -> dict:
        return {
            "ece": self.ece,
            "num_bins": self.num_bins,
            "bin_edges": self.bin_edges.tolist(),
            "bin_count": self.bin_count.tolist(),
            "bin_confidence": [None if np.isnan(v) else float(v) for v in self.bin_confidence],
            "bin_accuracy": [None if np.isnan(v) else float(v) for v in self.bin_accuracy],
            "num_predictions": self.num_predictions,
        }


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def expected_calibration_error(confidences, correct, *, num_bins: int = DEFAULT_NUM_BINS) -> CalibrationResult:
    """Compute the ECE of predictions given their confidences in [0, 1] and their correctness (0/1).

    Args:
        confidences: (n,) confidence of each prediction.
        correct: (n,) 1 where the prediction is right, else 0.
        num_bins: M, the number of equal-width bins over [0, 1].
    """
    confidences = _as_numpy(confidences).ravel()
    correct = _as_numpy(correct).ravel()
    if num_bins < 1:
        raise ValueError(f"Invalid num_bins {num_bins}: it must be at least 1.")
    if confidences.size == 0 or confidences.shape != correct.shape:
        raise ValueError(
            f"confidences and correct must be non-empty and of equal length, got {confidences.size} and {correct.size}."
        )
    if ((confidences < 0) | (confidences > 1) | ~np.isfinite(confidences)).any():
        raise ValueError("confidences must lie in [0, 1].")

    # Bin m (0-based) contains the confidences in (m/M, (m+1)/M], and a confidence of exactly 0 goes to bin 0.
    bins = np.clip(np.ceil(confidences * num_bins).astype(int) - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    confidence_sum = np.bincount(bins, weights=confidences, minlength=num_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_confidence = np.where(count > 0, confidence_sum / count, np.nan)
        bin_accuracy = np.where(count > 0, correct_sum / count, np.nan)
    filled = count > 0
    ece = float(np.sum(count[filled] / confidences.size * np.abs(bin_accuracy[filled] - bin_confidence[filled])))
    return CalibrationResult(
        ece=ece,
        num_bins=num_bins,
        bin_edges=np.linspace(0.0, 1.0, num_bins + 1),
        bin_count=count,
        bin_confidence=bin_confidence,
        bin_accuracy=bin_accuracy,
        num_predictions=int(confidences.size),
    )


def confidences_and_correctness(probabilities, targets, *, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Turn model probabilities into (confidence, correct) pairs as described in the module docstring.

    Args:
        probabilities: (N, C) softmax outputs or (N, L) sigmoid outputs.
        targets: (N,) class indices or (N, L) multi-hot labels.
    """
    probabilities = _as_numpy(probabilities)
    targets = _as_numpy(targets)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C), got {probabilities.shape}.")
    if multi_label:
        if targets.shape != probabilities.shape:
            raise ValueError(f"multi-label targets must have shape {probabilities.shape}, got {targets.shape}.")
        confidence = np.maximum(probabilities, 1 - probabilities)
        correct = (probabilities >= 0.5) == (targets >= 0.5)
        return confidence.ravel(), correct.ravel().astype(np.float64)
    if targets.shape != (probabilities.shape[0],):
        raise ValueError(f"single-label targets must have shape ({probabilities.shape[0]},), got {targets.shape}.")
    correct = probabilities.argmax(axis=1) == targets.astype(int)
    return probabilities.max(axis=1), correct.astype(np.float64)


def calibration_from_probabilities(
    probabilities, targets, *, multi_label: bool, num_bins: int = DEFAULT_NUM_BINS
) -> CalibrationResult:
    """Compute the ECE of model probabilities against targets."""
    confidences, correct = confidences_and_correctness(probabilities, targets, multi_label=multi_label)
    return expected_calibration_error(confidences, correct, num_bins=num_bins)


def save_reliability_diagram(result: CalibrationResult, path: str | os.PathLike, *, title: str = "Reliability diagram") -> Path:
    """Draw accuracy against confidence per bin, with the diagonal and the ECE, and write it as a PNG atomically."""
    # A bare Figure renders PNG through the Agg canvas without pyplot, so the global backend is left alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4.5), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    width = 1.0 / result.num_bins
    lefts = result.bin_edges[:-1]
    filled = result.bin_count > 0
    axes.bar(lefts[filled], result.bin_accuracy[filled], width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    gap = result.bin_confidence[filled] - result.bin_accuracy[filled]
    axes.bar(
        lefts[filled], gap, bottom=result.bin_accuracy[filled], width=width, align="edge",
        color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap to confidence",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title}\nECE = {100 * result.ece:.2f}% ({result.num_bins} bins, n = {result.num_predictions})", fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, multi_label: bool, max_iter: int = 100) -> float:
    """Fit the temperature T > 0 that minimises the NLL of ``logits / T`` on validation data.

    T is optimised as log T with L-BFGS, starting at T = 1. The loss is binary cross-entropy per label for a
    multi-label task and cross-entropy otherwise.

    Args:
        logits: (N, C) validation logits from the model with dropout off.
        targets: (N, L) multi-hot labels or (N,) class indices.
    """
    logits = logits.detach().double()
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}.")
    if multi_label:
        targets = targets.detach().double()
        loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    else:
        targets = targets.detach().long()
        loss_fn = torch.nn.functional.cross_entropy
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(logits / log_temperature.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())
