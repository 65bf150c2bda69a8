r"""The Gaussian mechanism for releasing statistics of the private (real) data.

Use it for the per-group feature means or quantiles that an alignment loss targets. The mechanism
releases :math:`f(D) + \mathcal N(0, \sigma^2 I)` and is differentially private only because
:math:`f` has a bounded L2 sensitivity :math:`\Delta = \max_{D \sim D'} \lVert f(D) - f(D') \rVert_2`.
Every function here bounds it by clipping first, and none can be called without the bound.
Noise added to an unclipped quantity (for example input images) is data augmentation, with no
guarantee, and must never be reported as DP.

Adjacency is add/remove one record, the convention of opacus' DP-SGD accounting, so the epsilons
compose with those of :mod:`phenodiff.privacy.accounting`. Under it:

- Mean of feature vectors: each vector is clipped to L2 norm ``C``, :math:`x_i \mapsto x_i \min(1, C/\lVert x_i\rVert_2)`.
  The sum :math:`S = \sum_i \bar x_i` has sensitivity :math:`C`. The release is
  :math:`(S + \mathcal N(0, \sigma^2 I)) / n` with a public count :math:`n`, whose sensitivity is
  :math:`C/n`. Dividing by the actual, data-dependent count instead would give up to :math:`2C/(n+1)`.
  The count must therefore be a number already published, such as the group sizes of the dataset
  summary. Its disclosure is outside this guarantee.
- Per-group statistics: groups are disjoint, so adding or removing one record changes one group's
  sum only. Releasing all groups at once costs the same (epsilon, delta) as one group.
- Histograms for quantiles: each record adds 1 to one bin per feature, so the (features x bins)
  count table has sensitivity :math:`\sqrt{d}` for :math:`d` features.

Noise calibration is the analytic Gaussian mechanism (Balle & Wang, 2018, "Improving the Gaussian
Mechanism for Differential Privacy: Analytical Calibration and Optimal Denoising", ICML; checked against
the authors' reference implementation). For every epsilon > 0 and delta in (0, 1), the mechanism is
(epsilon, delta)-DP if and only if

.. math::
    \Phi\!\left(\frac{\Delta}{2\sigma} - \frac{\varepsilon\sigma}{\Delta}\right)
    - e^{\varepsilon}\,\Phi\!\left(-\frac{\Delta}{2\sigma} - \frac{\varepsilon\sigma}{\Delta}\right) \le \delta,

and :func:`analytic_gaussian_sigma` returns the smallest such sigma. It is never larger than the
classic :math:`\sigma = \sqrt{2\ln(1.25/\delta)}\,\Delta/\varepsilon`, which holds only for
epsilon < 1 (Dwork & Roth, 2014) and is provided as :func:`classic_gaussian_sigma`.

NOTE: noise comes from torch's pseudo-random generator, which is not cryptographically secure, and
floating-point Gaussian samples are open to known attacks (listed in the notes of opacus 1.6
``opacus.optimizers.optimizer._generate_noise``, which its ``secure_mode`` defends against). For a public
release, draw a fresh seed from the operating system (the default) and never store or publish the seed
next to the release.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from .accounting import PrivacyLedger, validate_delta, validate_epsilon
from .errors import InvalidPrivacyParameterError, MissingSensitivityBoundError

logger = logging.getLogger(__name__)

MECHANISM = "analytic-gaussian"
ADJACENCY = "add/remove one record"

_MISSING_BOUND = (
    "{name} must be a finite number > 0, got {value!r}. The Gaussian mechanism is differentially private "
    "only on a quantity with bounded sensitivity, which clipping provides. Noise without a clipping bound is "
    "data augmentation and must not be reported as DP: state the bound, or use ordinary augmentation outside "
    "phenodiff.privacy."
)


# -------------------------------------------------------------------------------------- calibration
def gaussian_delta(*, noise_std: float, epsilon: float, sensitivity: float) -> float:
    r"""Return the smallest delta for which N(0, noise_std^2) noise on sensitivity Delta is (epsilon, delta)-DP.

    This is the exact privacy profile of the Gaussian mechanism (Balle & Wang, 2018):
    :math:`\delta(\varepsilon) = \Phi(\Delta/(2\sigma) - \varepsilon\sigma/\Delta) - e^{\varepsilon}\Phi(-\Delta/(2\sigma) - \varepsilon\sigma/\Delta)`.
    The second term is evaluated in log space so that large epsilon does not overflow.
    """
    ratio = sensitivity / noise_std
    first = norm.cdf(ratio / 2.0 - epsilon / ratio)
    second = math.exp(epsilon + norm.logcdf(-ratio / 2.0 - epsilon / ratio))
    return float(max(first - second, 0.0))


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Return the smallest noise standard deviation that makes the Gaussian mechanism (epsilon, delta)-DP.

    Valid for every epsilon > 0 and delta in (0, 1) (Balle & Wang, 2018). The root of
    ``gaussian_delta(noise_std=sigma) = delta`` is found by Brent's method on log sigma and then nudged
    up until the profile is at most ``delta``, so the result never under-protects.
    """
    epsilon = validate_epsilon(epsilon)
    delta = validate_delta(delta)
    sensitivity = _validate_bound(sensitivity, name="sensitivity")

    def excess(log_sigma: float) -> float:
        return gaussian_delta(noise_std=math.exp(log_sigma), epsilon=epsilon, sensitivity=sensitivity) - delta

    # The profile decreases in sigma from 1 (sigma -> 0) to 0 (sigma -> inf): bracket the root by doubling.
    low = high = math.log(sensitivity)
    while excess(low) < 0.0:
        low -= math.log(2.0)
    while excess(high) > 0.0:
        high += math.log(2.0)
    sigma = math.exp(brentq(excess, low, high, xtol=1e-14, rtol=1e-14))
    while gaussian_delta(noise_std=sigma, epsilon=epsilon, sensitivity=sensitivity) > delta:
        sigma *= 1.0 + 1e-12
    return sigma


def classic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Return sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon, valid only for epsilon < 1.

    Provided for comparison: :func:`analytic_gaussian_sigma` is never larger and holds for every epsilon.
    """
    epsilon = validate_epsilon(epsilon)
    delta = validate_delta(delta)
    sensitivity = _validate_bound(sensitivity, name="sensitivity")
    if epsilon >= 1.0:
        raise InvalidPrivacyParameterError(
            f"The classic Gaussian calibration holds only for epsilon < 1, got {epsilon:g}; use analytic_gaussian_sigma."
        )
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / epsilon


# ------------------------------------------------------------------------------------------ clipping
def clip_rows(values: torch.Tensor | np.ndarray, *, clip_norm: float) -> torch.Tensor:
    """Scale each row (one record's feature vector) to L2 norm at most ``clip_norm``.

    Args:
        values: (n, d) feature vectors, one row per record.
        clip_norm: The bound C; rows with norm <= C are unchanged.

    Returns:
        (n, d) float64 tensor with every row norm <= C.
    """
    clip_norm = _validate_bound(clip_norm, name="clip_norm")
    values = _as_matrix(values)
    norms = values.norm(dim=1, keepdim=True)
    scale = torch.clamp(clip_norm / torch.clamp(norms, min=1e-300), max=1.0)
    return values * scale


def clipped_mean(values: torch.Tensor | np.ndarray, *, clip_norm: float, public_count: int) -> torch.Tensor:
    """Return the noiseless statistic of :func:`release_mean`: the sum of clipped rows over ``public_count``.

    Adding or removing one row moves it by at most ``clip_norm / public_count`` in L2 norm.
    """
    public_count = _validate_count(public_count, name="public_count")
    return clip_rows(values, clip_norm=clip_norm).sum(dim=0) / public_count


# ------------------------------------------------------------------------------------------ releases
@dataclass
class GaussianRelease:
    """A statistic released by the Gaussian mechanism, with what its privacy claim rests on.

    Attributes:
        values: The released (noisy) statistic, per group when groups were given (keys as given).
        epsilon: Epsilon of the guarantee.
        delta: Delta of the guarantee.
        noise_std: Standard deviation sigma of the Gaussian noise added to the bounded statistic
            (the sum or the count table, before any division by a public count).
        sensitivity: L2 sensitivity Delta of that statistic under add/remove adjacency.
        bound: The clipping bound the sensitivity comes from, e.g. ``{"clip_norm": 1.0}``.
        public_counts: Counts treated as public (not protected), per group.
        statistic: ``"mean"`` or ``"quantiles"``.
        mechanism: Always ``"analytic-gaussian"``.
        adjacency: Always ``"add/remove one record"``.
    """

    values: dict[str, np.ndarray]
    epsilon: float
    delta: float
    noise_std: float
    sensitivity: float
    bound: dict[str, Any]
    public_counts: dict[str, int] = field(default_factory=dict)
    statistic: str = "mean"
    mechanism: str = MECHANISM
    adjacency: str = ADJACENCY

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (arrays become lists). The noise seed is never part of it."""
        data = asdict(self)
        data["values"] = {key: np.asarray(value).tolist() for key, value in self.values.items()}
        return data


def release_mean(
    values: torch.Tensor | np.ndarray,
    *,
    clip_norm: float,
    epsilon: float,
    delta: float,
    public_count: int | Mapping[Hashable, int],
    ledger: PrivacyLedger,
    name: str,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> GaussianRelease:
    r"""Release the mean of clipped feature vectors (per group when ``groups`` is given) with (epsilon, delta)-DP.

    Computes :math:`(\sum_{i \in g} \bar x_i + \mathcal N(0, \sigma^2 I)) / n_g` for each group g, with
    :math:`\bar x_i` the rows clipped to L2 norm C, sensitivity :math:`\Delta = C` on the sums (one
    record changes one group's sum), and sigma from :func:`analytic_gaussian_sigma`. The spend is
    recorded in ``ledger`` under ``name`` before the values are returned.

    Args:
        values: (n, d) feature vectors of the private records, one row per record.
        clip_norm: Per-record L2 bound C. Required: there is no default because the guarantee rests on it.
        epsilon: Epsilon of this release.
        delta: Delta of this release (below 1/N when the ledger has a dataset size N).
        public_count: Number of records n (or one per group) to divide by. It must be public already,
            for example the group sizes of the dataset summary, because it is not protected here.
        ledger: Ledger that records the spend.
        name: Ledger component name, e.g. ``"alignment_target"``.
        groups: (n,) group label of each record; None releases one mean under the key ``"all"``.
        generator: torch generator for the noise. Default: a fresh generator seeded from the operating
            system. Pass a seeded one only for tests and reproducible experiments.

    Returns:
        A :class:`GaussianRelease` whose ``values`` maps each group (as a string) to a (d,) array.
    """
    clip_norm = _validate_bound(clip_norm, name="clip_norm")
    epsilon, delta = _validate_budget(epsilon=epsilon, delta=delta, ledger=ledger)
    clipped = clip_rows(values, clip_norm=clip_norm)
    keys, index = _group_index(groups, clipped.shape[0])
    counts = _public_counts(public_count, keys)

    # 1. Bounded statistic: per-group sums of clipped rows, sensitivity C under add/remove.
    sums = torch.zeros((len(keys), clipped.shape[1]), dtype=torch.float64)
    sums.index_add_(0, index, clipped)

    # 2. Calibrate and add the noise, then divide by the public counts (post-processing).
    sigma = analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=clip_norm)
    noisy = sums + sigma * torch.randn(sums.shape, generator=_generator(generator), dtype=torch.float64)
    means = noisy / torch.tensor([counts[key] for key in keys], dtype=torch.float64)[:, None]

    ledger.record_gaussian_release(
        name, epsilon=epsilon, delta=delta, noise_std=sigma, sensitivity=clip_norm,
        note=f"mean of {clipped.shape[1]} features over {len(keys)} group(s), clip_norm {clip_norm:g}",
    )
    return GaussianRelease(
        values={key: means[i].numpy() for i, key in enumerate(keys)},
        epsilon=epsilon,
        delta=delta,
        noise_std=sigma,
        sensitivity=clip_norm,
        bound={"clip_norm": clip_norm},
        public_counts=counts,
        statistic="mean",
    )


def release_quantiles(
    values: torch.Tensor | np.ndarray,
    *,
    lower: float,
    upper: float,
    bins: int,
    quantiles: Sequence[float],
    epsilon: float,
    delta: float,
    ledger: PrivacyLedger,
    name: str,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    generator: torch.Generator | None = None,
    group_keys: Sequence[Hashable] | None = None,
) -> GaussianRelease:
    r"""Release per-feature quantiles (per group when ``groups`` is given) through a noisy histogram.

    Each of the d features is clipped to the public range [lower, upper] and counted in ``bins``
    equal-width bins. The (groups x d x bins) count table has L2 sensitivity :math:`\sqrt d` (one record
    adds 1 to one bin per feature, in one group). Gaussian noise calibrated to it is added, negative
    counts are set to 0, and quantiles are read off each feature's cumulative distribution by linear
    interpolation inside a bin. All steps after the noise are post-processing.

    Args:
        values: (n, d) feature values of the private records.
        lower: Lower end of the public value range; smaller values are clipped to it.
        upper: Upper end of the public value range; larger values are clipped to it.
        bins: Number of equal-width bins in [lower, upper].
        quantiles: Levels in [0, 1], e.g. ``(0.1, 0.5, 0.9)``.
        epsilon, delta, ledger, name, groups, generator: As for :func:`release_mean`.
        group_keys: The public list of groups to release. Every key gets a histogram, empty or not, so the
            set of released groups does not depend on the records. Default: the groups present in ``groups``.

    Returns:
        A :class:`GaussianRelease` whose ``values`` maps each group to a (len(quantiles), d) array.
    """
    lower, upper = float(lower), float(upper)
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise MissingSensitivityBoundError(
            f"lower and upper must be finite with lower < upper, got [{lower!r}, {upper!r}]. The histogram needs "
            "a public value range; it must not be taken from the private data."
        )
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise InvalidPrivacyParameterError(f"bins must be a positive integer, got {bins!r}.")
    levels = np.asarray(quantiles, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0 or np.any((levels < 0) | (levels > 1)):
        raise InvalidPrivacyParameterError(f"quantiles must be a non-empty list of levels in [0, 1], got {quantiles!r}.")
    epsilon, delta = _validate_budget(epsilon=epsilon, delta=delta, ledger=ledger)
    matrix = _as_matrix(values)
    n, d = matrix.shape
    keys, index = _group_index(groups, n, group_keys)

    # 1. Bounded statistic: per-group, per-feature histograms over public bins, sensitivity sqrt(d).
    width = (upper - lower) / bins
    bin_index = torch.clamp(((matrix.clamp(lower, upper) - lower) / width).long(), max=bins - 1)
    flat = (index[:, None] * d + torch.arange(d)[None, :]) * bins + bin_index
    counts = torch.bincount(flat.reshape(-1), minlength=len(keys) * d * bins).to(torch.float64).reshape(len(keys), d, bins)
    sensitivity = math.sqrt(d)

    # 2. Noise, then post-processing: clamp, cumulate, interpolate.
    sigma = analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    noisy = torch.clamp(counts + sigma * torch.randn(counts.shape, generator=_generator(generator), dtype=torch.float64), min=0.0)
    edges = lower + width * np.arange(bins + 1)
    released = {key: _quantiles_from_histogram(noisy[g].numpy(), edges, levels) for g, key in enumerate(keys)}

    ledger.record_gaussian_release(
        name, epsilon=epsilon, delta=delta, noise_std=sigma, sensitivity=sensitivity,
        note=f"quantiles of {d} features over {len(keys)} group(s), range [{lower:g}, {upper:g}], {bins} bins",
    )
    return GaussianRelease(
        values=released,
        epsilon=epsilon,
        delta=delta,
        noise_std=sigma,
        sensitivity=sensitivity,
        bound={"lower": lower, "upper": upper, "bins": int(bins)},
        statistic="quantiles",
    )


# ------------------------------------------------------------------------------------------- helpers
def _quantiles_from_histogram(histogram: np.ndarray, edges: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(d, bins) non-negative counts -> (len(levels), d) quantiles; a feature with no mass gets the range midpoint."""
    d = histogram.shape[0]
    result = np.empty((levels.size, d))
    for feature in range(d):
        mass = histogram[feature]
        total = mass.sum()
        if total <= 0.0:
            result[:, feature] = 0.5 * (edges[0] + edges[-1])
            continue
        cdf = np.concatenate([[0.0], np.cumsum(mass) / total])
        # np.interp needs increasing x: strictly increasing except where a bin is empty, where the
        # leftmost edge of the flat stretch is the consistent choice.
        keep = np.concatenate([[True], np.diff(cdf) > 0])
        result[:, feature] = np.interp(levels, cdf[keep], edges[keep])
    return result


def _validate_bound(value: Any, *, name: str) -> float:
    try:
        bound = float(value)
    except (TypeError, ValueError):
        raise MissingSensitivityBoundError(_MISSING_BOUND.format(name=name, value=value)) from None
    if not math.isfinite(bound) or bound <= 0.0:
        raise MissingSensitivityBoundError(_MISSING_BOUND.format(name=name, value=value))
    return bound


def _validate_budget(*, epsilon: float, delta: float, ledger: PrivacyLedger) -> tuple[float, float]:
    if not isinstance(ledger, PrivacyLedger):
        raise InvalidPrivacyParameterError(
            f"ledger must be a PrivacyLedger, got {type(ledger).__name__}: every release of private statistics is accounted."
        )
    return validate_epsilon(epsilon), validate_delta(delta, dataset_size=ledger.dataset_size)


def _validate_count(count: Any, *, name: str) -> int:
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise InvalidPrivacyParameterError(f"{name} must be a positive integer, got {count!r}.")
    return int(count)


def _as_matrix(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    matrix = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    matrix = matrix.to(torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InvalidPrivacyParameterError(f"values must be a non-empty (n, d) matrix, one row per record, got shape {tuple(matrix.shape)}.")
    if not torch.isfinite(matrix).all():
        raise InvalidPrivacyParameterError("values contain NaN or infinite entries; impute or drop them before the release.")
    return matrix


def _group_index(groups: Sequence[Hashable] | np.ndarray | None, n: int,
                 group_keys: Sequence[Hashable] | None = None) -> tuple[list[str], torch.Tensor]:
    if groups is None:
        return ["all"], torch.zeros(n, dtype=torch.long)
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise InvalidPrivacyParameterError(f"groups must have one label per record, shape ({n},), got {labels.shape}.")
    if group_keys is not None:
        keys = [str(key) for key in group_keys]
        position = {key: i for i, key in enumerate(keys)}
        unknown = sorted(set(labels.astype(str)) - set(position))
        if unknown:
            raise InvalidPrivacyParameterError(f"Records name group(s) {unknown[:5]} outside group_keys {keys}; drop them or add the keys.")
        return keys, torch.as_tensor([position[label] for label in labels.astype(str)], dtype=torch.long)
    keys, inverse = np.unique(labels.astype(str), return_inverse=True)
    return [str(key) for key in keys], torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def _public_counts(public_count: int | Mapping[Hashable, int], keys: list[str]) -> dict[str, int]:
    if isinstance(public_count, Mapping):
        given = {str(key): value for key, value in public_count.items()}
        missing = [key for key in keys if key not in given]
        if missing:
            raise InvalidPrivacyParameterError(f"public_count has no count for group(s) {missing}; give one public count per group.")
        return {key: _validate_count(given[key], name=f"public_count[{key!r}]") for key in keys}
    if len(keys) != 1:
        raise InvalidPrivacyParameterError(f"With {len(keys)} groups, public_count must map each group to its public count.")
    return {keys[0]: _validate_count(public_count, name="public_count")}


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    fresh = torch.Generator()
    fresh.manual_seed(secrets.randbits(63))
    return fresh
