r"""Copy flags: which synthetic images are so close to a training image that they count as copies.

A synthetic image's score is computed from its nearest training images in embedding space:

- ``"heldout_quantile"``: the distance :math:`d_1` to the nearest training image.
- ``"ratio"``: :math:`d_1 / d_k`, the nearest distance over the distance to the k-th nearest training
  image. A copy of one training image has a small ratio even where the embedding's distances are
  globally large.

An image is flagged when its score is strictly below a threshold. The threshold is either calibrated on
held-out real images, which are not in the training set and come from the same distribution, or set
by hand (ratio test only).

Calibration is split-conformal (Vovk, Gammerman & Shafer, 2005, "Algorithmic Learning in a Random
World"): with held-out scores :math:`s_{(1)} \le \dots \le s_{(m)}` and
false-flag rate q, the threshold is :math:`t = s_{(r)}` with :math:`r = \lfloor q (m + 1) \rfloor`. A
fresh real image whose score is exchangeable with the held-out scores is flagged with probability
:math:`r / (m + 1) \le q` (over the draw of held-out and fresh images). This needs :math:`r \ge 1`,
i.e. :math:`m \ge 1/q - 1` held-out images (99 for q = 0.01, 19 for q = 0.05). For one fixed
calibration set the rate varies around that bound: the fraction of T fresh images flagged is
beta-binomial, Beta(r, m + 1 - r) mixed with Binomial(T, .) (Marques, 2023, "Universal distribution of
the empirical coverage in split conformal prediction").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import AuditCalibrationError, AuditInputError
from .search import DEFAULT_BLOCK_BYTES, as_embedding_matrix, nearest_neighbors

CopyMethod = Literal["heldout_quantile", "ratio"]
METHODS: tuple[str, ...] = ("heldout_quantile", "ratio")


@dataclass
class CopyThreshold:
    """A calibrated or fixed copy threshold.

    Attributes:
        method: ``"heldout_quantile"`` (score = nearest distance) or ``"ratio"`` (score = d1 / dk).
        value: Threshold on the score; an image is flagged when its score is strictly below it.
        k: Neighbour rank of the ratio test's denominator (1 for ``"heldout_quantile"``).
        false_flag_rate: The requested rate q, or None for a hand-set ratio threshold.
        guaranteed_false_flag_rate: r / (m + 1), the conformal bound on the false-flag probability of
            a fresh real image, or None when not calibrated.
        calibration_size: Number m of held-out images used, or None.
        embedding: Description of the embedding the scores were computed in.
    """

    method: str
    value: float
    k: int = 1
    false_flag_rate: float | None = None
    guaranteed_false_flag_rate: float | None = None
    calibration_size: int | None = None
    embedding: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CopyFlags:
    """Output of :func:`flag_copies` for M synthetic images.

    Attributes:
        flagged: (M,) bool, True for copy candidates.
        nearest_index: (M,) index of the nearest training image (the attributed original).
        nearest_distance: (M,) Euclidean distance to it in embedding space.
        score: (M,) the score compared with the threshold.
        threshold: The threshold used.
    """

    flagged: np.ndarray
    nearest_index: np.ndarray
    nearest_distance: np.ndarray
    score: np.ndarray
    threshold: CopyThreshold

    @property
    def copy_rate(self) -> float:
        """Fraction of synthetic images flagged (0 for an empty set)."""
        return float(self.flagged.mean()) if self.flagged.size else 0.0

    def copy_counts(self, n_train: int) -> np.ndarray:
        """(n_train,) number of flagged synthetic images attributed to each training image."""
        return np.bincount(self.nearest_index[self.flagged], minlength=n_train)


def _validate_method(method: str, k: int) -> int:
    if method not in METHODS:
        raise AuditInputError(f"method must be one of {METHODS}, got {method!r}.")
    if method == "heldout_quantile":
        return 1
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise AuditInputError(f"The ratio test compares the nearest with the k-th nearest neighbour; k must be an integer >= 2, got {k!r}.")
    return int(k)


def copy_scores(
    embeddings: torch.Tensor | np.ndarray,
    *,
    train_embeddings: torch.Tensor | np.ndarray,
    method: CopyMethod,
    k: int = 1,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (score, nearest index, nearest distance) per row of ``embeddings`` against the training set."""
    k = _validate_method(method, k)
    result = nearest_neighbors(embeddings, train_embeddings, k=k, block_bytes=block_bytes)
    nearest = result.distances[:, 0].double().numpy()
    if method == "heldout_quantile":
        score = nearest
    else:
        kth = result.distances[:, k - 1].double().numpy()
        # d1 = dk = 0 (several identical training images) is a copy: ratio 0.
        score = np.divide(nearest, kth, out=np.zeros_like(nearest), where=kth > 0)
    return score, result.indices[:, 0].numpy(), nearest


def calibrate_copy_threshold(
    *,
    train_embeddings: torch.Tensor | np.ndarray,
    heldout_embeddings: torch.Tensor | np.ndarray,
    false_flag_rate: float = 0.01,
    method: CopyMethod = "heldout_quantile",
    k: int = 1,
    embedding: dict[str, Any] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> CopyThreshold:
    """Calibrate the copy threshold so that fresh real images are flagged with probability at most ``false_flag_rate``.

    Args:
        train_embeddings: (N, d) embeddings of the training images.
        heldout_embeddings: (m, d) embeddings of real images not used in training (a validation or test
            split, separated from training by patient), m >= 1/false_flag_rate - 1. Images of training
            patients would be near-duplicates and lower the threshold. Use them for nothing the audit
            is then evaluated on, such as the fresh-image false-flag check.
        false_flag_rate: Target probability q that a real, non-training image is flagged.
        method: ``"heldout_quantile"`` or ``"ratio"`` (see the module docstring).
        k: Neighbour rank of the ratio test (>= 2); ignored by ``"heldout_quantile"``.
        embedding: Description of the embedding, stored in the threshold for the report.
        block_bytes: Memory bound of the nearest-neighbour search.

    Raises:
        AuditCalibrationError: fewer than 1/q - 1 held-out images.
    """
    q = float(false_flag_rate)
    if not (0.0 < q < 1.0):
        raise AuditInputError(f"false_flag_rate must lie in (0, 1), got {false_flag_rate!r}.")
    k = _validate_method(method, k)
    heldout = as_embedding_matrix(heldout_embeddings, name="heldout_embeddings")
    m = heldout.shape[0]
    rank = math.floor(q * (m + 1))
    if rank < 1:
        raise AuditCalibrationError(
            f"Calibrating at false_flag_rate {q:g} needs at least {math.ceil(1.0 / q - 1.0)} held-out images, got {m}. "
            "Add held-out real images or use a larger false_flag_rate."
        )
    scores, _, _ = copy_scores(heldout, train_embeddings=train_embeddings, method=method, k=k, block_bytes=block_bytes)
    value = float(np.sort(scores)[rank - 1])
    return CopyThreshold(
        method=method,
        value=value,
        k=k,
        false_flag_rate=q,
        guaranteed_false_flag_rate=rank / (m + 1),
        calibration_size=m,
        embedding=embedding,
    )


def fixed_ratio_threshold(*, ratio: float, k: int = 2, embedding: dict[str, Any] | None = None) -> CopyThreshold:
    """Return a hand-set ratio-test threshold: flag when d1 / dk < ``ratio``.

    Its false-flag rate is unknown; prefer :func:`calibrate_copy_threshold` when held-out images exist.
    """
    if not (0.0 < ratio <= 1.0):
        raise AuditInputError(f"ratio must lie in (0, 1], got {ratio!r}.")
    return CopyThreshold(method="ratio", value=float(ratio), k=_validate_method("ratio", k), embedding=embedding)


def flag_copies(
    synthetic_embeddings: torch.Tensor | np.ndarray,
    *,
    train_embeddings: torch.Tensor | np.ndarray,
    threshold: CopyThreshold,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> CopyFlags:
    """Flag the synthetic images whose score is strictly below ``threshold.value``.

    Args:
        synthetic_embeddings: (M, d) embeddings of generated images, in the same embedding as the threshold.
        train_embeddings: (N, d) embeddings of the training images.
        threshold: From :func:`calibrate_copy_threshold` or :func:`fixed_ratio_threshold`.
        block_bytes: Memory bound of the nearest-neighbour search.
    """
    score, nearest_index, nearest_distance = copy_scores(
        synthetic_embeddings, train_embeddings=train_embeddings, method=threshold.method, k=threshold.k, block_bytes=block_bytes
    )
    return CopyFlags(
        flagged=score < threshold.value,
        nearest_index=nearest_index,
        nearest_distance=nearest_distance,
        score=score,
        threshold=threshold,
    )
