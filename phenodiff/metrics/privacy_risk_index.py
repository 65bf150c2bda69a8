"""The privacy risk index PI: the largest probability that a generated image copies one given training image.

For training image i, let k_i be the number of the n generated images flagged as copies of it. Treating each
generated image as an independent trial, k_i ~ Binomial(n, p_i), and

    PI = max_i p_i.

The point estimate is max_i k_i / n. The reported bound is max_i U_i, where U_i is the one-sided exact
(Clopper-Pearson) binomial upper confidence bound at level 1 - alpha:

    U_i = quantile at 1 - alpha of Beta(k_i + 1, n - k_i),   and U_i = 1 when k_i = n.

It equals the upper end of ``scipy.stats.binomtest(k_i, n).proportion_ci(1 - 2 alpha, method="exact")``.

The maximum of the per-image bounds bounds the maximum of the p_i at the same level without a multiplicity
correction: if i* has the largest p_i, then P(max_i U_i >= p_i*) >= P(U_i* >= p_i*) >= 1 - alpha.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import beta


def clopper_pearson_upper(copies: np.ndarray, num_generated: int, *, confidence: float) -> np.ndarray:
    """Return the one-sided Clopper-Pearson upper bounds of p for counts ``copies`` out of ``num_generated``."""
    copies = np.asarray(copies, dtype=np.float64)
    upper = beta.ppf(confidence, copies + 1, np.maximum(num_generated - copies, 1e-300))
    return np.where(copies >= num_generated, 1.0, upper)


def privacy_risk_index(
    copy_counts: Sequence[int] | np.ndarray,
    *,
    num_generated: int,
    confidence: float = 0.95,
    threshold: float | None = None,
) -> dict:
    """Estimate PI from per-training-image copy counts.

    Args:
        copy_counts: (M,) number of generated images flagged as copies of each training image. Training
            images with no copy may be left out or given as 0, because U_i grows with k_i and so the bound
            depends on the largest count only.
        num_generated: n, the number of generated images that were audited.
        confidence: 1 - alpha of the one-sided bound.
        threshold: delta_PI; when given, ``below_threshold`` reports whether the bound is below it.

    Returns:
        ``pi_upper`` (the bound), ``pi_point`` (max_i k_i / n), ``max_copy_count``, ``argmax_image`` (position
        of that image in ``copy_counts``, None when empty), ``num_generated``, ``confidence``,
        ``num_training_images`` and, with a threshold, ``threshold`` and ``below_threshold``.
    """
    counts = np.asarray(copy_counts, dtype=np.float64).ravel()
    if isinstance(num_generated, bool) or int(num_generated) != num_generated or num_generated < 1:
        raise ValueError(f"Invalid num_generated {num_generated!r}: it must be an integer >= 1.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Invalid confidence {confidence}: it must be in (0, 1), for example 0.95.")
    if counts.size and ((counts < 0) | (counts != np.round(counts))).any():
        raise ValueError("copy_counts must be non-negative integers.")
    if counts.size and counts.max() > num_generated:
        raise ValueError(
            f"A copy count ({int(counts.max())}) exceeds num_generated ({num_generated}): an image cannot be copied more often than images were generated."
        )

    max_count = float(counts.max()) if counts.size else 0.0
    result = {
        "pi_upper": float(clopper_pearson_upper(np.array([max_count]), int(num_generated), confidence=confidence)[0]),
        "pi_point": max_count / num_generated,
        "max_copy_count": int(max_count),
        "argmax_image": int(counts.argmax()) if counts.size else None,
        "num_generated": int(num_generated),
        "confidence": float(confidence),
        "num_training_images": int(counts.size),
    }
    if threshold is not None:
        result["threshold"] = float(threshold)
        result["below_threshold"] = result["pi_upper"] < threshold
    return result
