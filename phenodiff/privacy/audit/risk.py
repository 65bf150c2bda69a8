r"""Risk statistics of the memorisation audit: the privacy risk index and the membership-inference AUC.

Privacy risk index. For training image i, let :math:`p_i` be the probability that one generated image
is flagged as a copy of image i. Then :math:`PI = \max_i p_i`. From M generated images, of which
:math:`c_i` are flagged copies attributed to image i and :math:`C = \sum_i c_i` are flagged in all, the
point estimate is :math:`\max_i c_i / M`. The upper bound assumes the M images are independent draws
of the generator (for a conditional generator: with conditions drawn independently).

The upper bound is :math:`U = \max_i CP(c_i, M, 1 - \alpha) = CP(\max_i c_i, M, 1 - \alpha)` with
:math:`\alpha = 1 - \text{confidence}`. It bounds the maximum over all N training images at level
:math:`1 - \alpha` without a multiplicity correction: if :math:`i^*` has the largest :math:`p_i`, then
:math:`P(U \ge p_{i^*}) \ge P(CP(c_{i^*}, M, 1 - \alpha) \ge p_{i^*}) \ge 1 - \alpha`. A bound from the
total count :math:`C` is never tighter at the same level, because :math:`\max_i c_i \le C`.

:math:`CP(x, M, \gamma)` is the one-sided Clopper-Pearson upper bound: the :math:`\gamma` quantile of
Beta(x + 1, M - x), and 1 when x = M (Clopper & Pearson, 1934). With zero copies,
:math:`U = 1 - \alpha^{1/M}`. This is the smallest bound the audit can report, and certifying
:math:`PI < \delta_{PI}` needs :math:`M > \ln(\alpha) / \ln(1 - \delta_{PI})` generated images
(:func:`minimum_generated_images`), about 6,000 for :math:`\delta_{PI} = 5 \times 10^{-4}` at 95%.

Membership inference. Per-image scores (e.g. the diffusion loss) of training images (members) and
held-out images (non-members) give an AUC by ``sklearn.metrics.roc_auc_score``. It is 0.5 when the
scores do not separate the two sets and 1 when every member scores as more likely a member than every
non-member.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from ..errors import AuditInputError


def _validate_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not (0.0 < confidence < 1.0):
        raise AuditInputError(f"confidence must lie in (0, 1), got {confidence!r}.")
    return confidence


def clopper_pearson_upper(successes: int | np.ndarray, trials: int, *, confidence: float = 0.95) -> float | np.ndarray:
    """One-sided Clopper-Pearson upper confidence bound on a binomial proportion.

    Returns ``beta.ppf(confidence, x + 1, n - x)``, or 1 where x = n.
    """
    confidence = _validate_confidence(confidence)
    if isinstance(trials, bool) or int(trials) != trials or trials < 1:
        raise AuditInputError(f"trials must be a positive integer, got {trials!r}.")
    x = np.asarray(successes, dtype=np.float64)
    if np.any(x < 0) or np.any(x > trials) or np.any(x != np.floor(x)):
        raise AuditInputError(f"successes must be integers in [0, {trials}], got {successes!r}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(x >= trials, 1.0, beta.ppf(confidence, x + 1.0, np.maximum(trials - x, 1.0)))
    return float(bound) if bound.ndim == 0 else bound


def zero_copy_bound(n_generated: int, *, confidence: float = 0.95) -> float:
    """Return the privacy-risk bound reported when none of ``n_generated`` images is a copy: 1 - alpha^(1/M)."""
    alpha = 1.0 - _validate_confidence(confidence)
    if n_generated < 1:
        raise AuditInputError(f"n_generated must be >= 1, got {n_generated!r}.")
    return float(-math.expm1(math.log(alpha) / n_generated))


def minimum_generated_images(delta_pi: float, *, confidence: float = 0.95) -> int:
    """Smallest number M of generated images for which zero copies certify PI < ``delta_pi``.

    That is the smallest M with 1 - alpha^(1/M) < delta_pi, i.e. M > ln(alpha) / ln(1 - delta_pi).
    With any copies the bound is larger, so this is a lower limit on the audit sample.
    """
    alpha = 1.0 - _validate_confidence(confidence)
    if not (0.0 < delta_pi < 1.0):
        raise AuditInputError(f"delta_pi must lie in (0, 1), got {delta_pi!r}.")
    limit = math.log(alpha) / math.log1p(-delta_pi)
    m = math.floor(limit) + 1
    # Guard the boundary against rounding in the logarithms.
    while zero_copy_bound(m, confidence=confidence) >= delta_pi:
        m += 1
    while m > 1 and zero_copy_bound(m - 1, confidence=confidence) < delta_pi:
        m -= 1
    return m


@dataclass
class PrivacyRiskIndex:
    """Estimate and upper confidence bound of PI = max_i Pr(a generated image is a copy of training image i).

    Attributes:
        estimate: max_i c_i / M.
        upper: max_i CP(c_i, M, 1 - alpha), see the module docstring.
        confidence: Confidence level of ``upper``.
        n_generated: M, generated images audited.
        n_train: N, training images the maximum runs over.
        copies_total: C, flagged images attributed to any of the N images.
        max_copies: max_i c_i.
        argmax_train_index: A training image with the most copies (index into the N), or None when there are none.
        delta_pi: Threshold of the constraint PI < delta_pi, when given.
        certified: ``upper < delta_pi``, or None without a threshold.
        minimum_generated: Smallest M that could certify ``delta_pi`` (zero copies), or None.
    """

    estimate: float
    upper: float
    confidence: float
    n_generated: int
    n_train: int
    copies_total: int
    max_copies: int
    argmax_train_index: int | None
    delta_pi: float | None = None
    certified: bool | None = None
    minimum_generated: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def privacy_risk_index(
    copy_counts: np.ndarray,
    *,
    n_generated: int,
    confidence: float = 0.95,
    delta_pi: float | None = None,
) -> PrivacyRiskIndex:
    """Estimate PI with its Clopper-Pearson upper bound from per-training-image copy counts.

    Args:
        copy_counts: (N,) number of flagged generated images attributed to each training image, e.g.
            :meth:`phenodiff.privacy.audit.copies.CopyFlags.copy_counts`. For a demographic group, pass
            the counts of that group's training images only.
        n_generated: M, the number of generated images audited (flagged or not).
        confidence: Confidence level of the upper bound.
        delta_pi: Optional threshold; sets ``certified`` and ``minimum_generated``.
    """
    confidence = _validate_confidence(confidence)
    counts = np.asarray(copy_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise AuditInputError(f"copy_counts must be a non-empty (N,) array, got shape {counts.shape}.")
    if isinstance(n_generated, bool) or int(n_generated) != n_generated or n_generated < 1:
        raise AuditInputError(f"n_generated must be a positive integer, got {n_generated!r}.")
    n_generated = int(n_generated)
    total = int(counts.sum())
    if np.any(counts < 0) or total > n_generated:
        raise AuditInputError(f"copy_counts must be non-negative and sum to at most n_generated={n_generated}, got a sum of {total}.")

    n_train = counts.size
    max_copies = int(counts.max())
    # The bound grows with the count, so the maximum of the per-image bounds is the bound at the largest count.
    upper = clopper_pearson_upper(max_copies, n_generated, confidence=confidence)

    certified = minimum = None
    if delta_pi is not None:
        certified = bool(upper < delta_pi)
        minimum = minimum_generated_images(delta_pi, confidence=confidence)
    return PrivacyRiskIndex(
        estimate=max_copies / n_generated,
        upper=float(upper),
        confidence=confidence,
        n_generated=n_generated,
        n_train=n_train,
        copies_total=total,
        max_copies=max_copies,
        argmax_train_index=int(np.argmax(counts)) if max_copies > 0 else None,
        delta_pi=None if delta_pi is None else float(delta_pi),
        certified=certified,
        minimum_generated=minimum,
    )


def membership_inference_auc(
    *,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    lower_is_member: bool = True,
) -> float:
    """AUC of telling training images (members) from held-out images (non-members) by a per-image score.

    Args:
        member_scores: (n1,) scores of training images, e.g. the diffusion loss.
        nonmember_scores: (n0,) scores of held-out real images, computed the same way.
        lower_is_member: True when a lower score suggests a member (losses); False for likelihoods.

    Returns:
        ``roc_auc_score`` with members as the positive class: 0.5 means no separation, 1 perfect.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise AuditInputError(f"Membership inference needs member and non-member scores, got {members.size} and {nonmembers.size}.")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise AuditInputError("Membership scores contain NaN or infinite values.")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    scores = np.concatenate([members, nonmembers])
    return float(roc_auc_score(labels, -scores if lower_is_member else scores))
