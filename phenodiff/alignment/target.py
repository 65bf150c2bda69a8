"""The alignment loss L_shift against a fixed real-side target: per-group quantiles of projected real features.

A distance between a synthetic batch and a real batch couples every sample of both batches, so it is not a
sum of per-sample terms and cannot be trained under DP-SGD on private real images. Here the real side is a
fixed statistic instead: for each phenotype group g, the quantiles Q_g[j, k] of the real features projected
on direction theta_k, at levels u_j. Under DP these quantiles are released once with the Gaussian mechanism
on a clipped statistic. That release happens outside this module, and
:meth:`SlicedQuantileTarget.from_released` takes its output. Because the target is fixed, the real images do not enter the loss.

The distance of synthetic features X_g to the target is the sliced W1 against the quantile atoms

    D_g = (1/K) sum_k W1( theta_k # X_g , (1/M) sum_j delta_{Q_g[j, k]} ),

and the loss is L_shift = lambda_s * sum_g w_g D_g.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import ot
import torch

from .groups import group_name_array, sorted_unique
from .sliced import GroupwiseDistance, _check_features, _group_weights, _weighted_mean

DEFAULT_NUM_QUANTILES = 64


def midpoint_levels(num_quantiles: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the levels u_j = (j + 0.5) / M for j = 0..M-1, the midpoints of M equal slices of (0, 1)."""
    if num_quantiles < 1:
        raise ValueError(f"Invalid num_quantiles {num_quantiles}: it must be at least 1.")
    return (torch.arange(num_quantiles, dtype=torch.float64) + 0.5).div(num_quantiles).to(dtype)


@dataclass(frozen=True)
class SlicedQuantileTarget:
    """Per-group quantiles of real features projected on fixed directions.

    Attributes:
        projections: (D, K) unit directions. The synthetic features are projected on the same ones.
        levels: (M,) strictly increasing quantile levels in (0, 1).
        quantiles: (G, M, K); ``quantiles[g, j, k]`` is the level-``levels[j]`` quantile of the real
            features of group ``group_names[g]`` projected on direction k.
        group_names: The G group names, in the order of the first axis of ``quantiles``.
    """

    projections: torch.Tensor
    levels: torch.Tensor
    quantiles: torch.Tensor
    group_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.projections.ndim != 2:
            raise ValueError(f"projections must have shape (D, K), got {tuple(self.projections.shape)}.")
        num_projections = self.projections.shape[1]
        if self.levels.ndim != 1 or self.levels.numel() == 0:
            raise ValueError(f"levels must be a non-empty 1-D tensor, got shape {tuple(self.levels.shape)}.")
        if not bool(((self.levels > 0) & (self.levels < 1)).all()) or not bool((self.levels.diff() > 0).all()):
            raise ValueError(f"levels must be strictly increasing and inside (0, 1), got {self.levels.tolist()}.")
        expected = (len(self.group_names), self.levels.numel(), num_projections)
        if tuple(self.quantiles.shape) != expected:
            raise ValueError(
                f"quantiles must have shape (groups, levels, projections) = {expected}, got {tuple(self.quantiles.shape)}."
            )
        if len(set(self.group_names)) != len(self.group_names):
            raise ValueError(f"group_names contains duplicates: {list(self.group_names)}.")

    @classmethod
    def from_released(
        cls,
        quantiles: torch.Tensor,
        *,
        projections: torch.Tensor,
        group_names: Sequence[str],
        levels: torch.Tensor | None = None,
    ) -> "SlicedQuantileTarget":
        """Wrap a released (G, M, K) quantile tensor; ``levels`` defaults to :func:`midpoint_levels` (M)."""
        if levels is None:
            levels = midpoint_levels(quantiles.shape[1], dtype=quantiles.dtype)
        return cls(projections=projections, levels=levels, quantiles=quantiles, group_names=tuple(group_names))

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        groups: torch.Tensor | np.ndarray | Sequence,
        *,
        projections: torch.Tensor,
        group_names: Sequence[str] | None = None,
        num_quantiles: int = DEFAULT_NUM_QUANTILES,
    ) -> "SlicedQuantileTarget":
        """Compute the target from real features directly (``torch.quantile``, linear interpolation).

        The result is not differentially private. Use it for public data, or as the statistic that a
        Gaussian-mechanism release clips and noises before training on private data.

        Args:
            features: (N, D) real features.
            groups: N group names, or indices into ``group_names``.
            projections: (D, K) directions, for example from :func:`random_projections`.
            num_quantiles: M, the number of midpoint levels.
        """
        _check_features(features, "features")
        if projections.ndim != 2 or projections.shape[0] != features.shape[1]:
            raise ValueError(
                f"projections must have shape (D, K) with D = {features.shape[1]}, got {tuple(projections.shape)}."
            )
        names = group_name_array(groups, num_samples=features.shape[0], group_names=group_names)
        levels = midpoint_levels(num_quantiles, dtype=features.dtype)
        projected = features.detach() @ projections.to(features.dtype)
        present = sorted_unique(names)
        per_group = [
            torch.quantile(projected[torch.as_tensor(np.flatnonzero(names == name))], levels, dim=0)
            for name in present
        ]
        return cls(projections=projections, levels=levels, quantiles=torch.stack(per_group), group_names=tuple(present))

    def group_index(self, name: str) -> int | None:
        """Position of group ``name`` in :attr:`group_names`, or None when the target has no such group."""
        try:
            return self.group_names.index(name)
        except ValueError:
            return None


def _project(features: torch.Tensor, target: SlicedQuantileTarget) -> torch.Tensor:
    if features.shape[1] != target.projections.shape[0]:
        raise ValueError(
            f"features have dimension {features.shape[1]} but the target projections expect {target.projections.shape[0]}."
        )
    return features @ target.projections.to(dtype=features.dtype, device=features.device)


def sliced_wasserstein_to_target(
    features: torch.Tensor,
    groups: torch.Tensor | np.ndarray | Sequence,
    target: SlicedQuantileTarget,
    *,
    group_names: Sequence[str] | None = None,
    weighting: Literal["count", "uniform"] = "count",
) -> GroupwiseDistance:
    """Compute D_g, the sliced W1 between each group's synthetic features and its target quantiles.

    Each 1-D term is POT's ``ot.wasserstein_1d`` between the projected batch (uniform weights) and the M
    quantile atoms (uniform weights), batched over the K directions. Groups that the target lacks are
    listed in ``skipped``.

    Args:
        features: (N, D) synthetic features; gradients flow through them.
        groups: N group names, or indices into ``group_names``.
        target: The fixed real-side statistic.
        weighting: ``count`` weights groups by their number of samples in the batch, ``uniform`` equally.

    Raises:
        ValueError: no group of the batch is in the target.
    """
    _check_features(features, "features")
    names = group_name_array(groups, num_samples=features.shape[0], group_names=group_names)
    projected = _project(features, target)
    quantiles = target.quantiles.to(dtype=features.dtype, device=features.device)

    per_group: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name in sorted_unique(names):
        position = target.group_index(name)
        if position is None:
            skipped[name] = "the target has no quantiles for this group"
            continue
        index = torch.as_tensor(np.flatnonzero(names == name), device=features.device)
        per_projection = ot.wasserstein_1d(projected[index], quantiles[position], p=1)
        per_group[name] = per_projection.mean()
        counts[name] = int(index.numel())
    if not per_group:
        raise ValueError(
            f"None of the batch groups {sorted(skipped)} is in the target, whose groups are {list(target.group_names)}."
        )
    weights = _group_weights(counts, weighting)
    return GroupwiseDistance(per_group, counts, weights, _weighted_mean(per_group, weights), skipped)


def _interpolate_quantiles(levels: torch.Tensor, quantiles: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Evaluate the piecewise-linear quantile function through (levels[j], quantiles[j, k]) at ``at`` (n, K).

    Levels outside [levels[0], levels[-1]] take the end values.
    """
    if levels.numel() == 1:
        return quantiles[0].expand_as(at)
    upper = torch.searchsorted(levels, at.contiguous()).clamp(1, levels.numel() - 1)
    lower = upper - 1
    span = levels[upper] - levels[lower]
    weight = ((at - levels[lower]) / span).clamp(0.0, 1.0)
    return torch.gather(quantiles, 0, lower) * (1 - weight) + torch.gather(quantiles, 0, upper) * weight


def _per_sample_setup(features, groups, target: SlicedQuantileTarget, group_names):
    """Return the group names, projected features, target levels and quantiles, and empty terms and coverage."""
    _check_features(features, "features")
    names = group_name_array(groups, num_samples=features.shape[0], group_names=group_names)
    projected = _project(features, target)
    levels = target.levels.to(dtype=features.dtype, device=features.device)
    quantiles = target.quantiles.to(dtype=features.dtype, device=features.device)
    terms = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    covered = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    return names, projected, levels, quantiles, terms, covered


def per_sample_shift_terms(
    features: torch.Tensor,
    groups: torch.Tensor | np.ndarray | Sequence,
    target: SlicedQuantileTarget,
    *,
    group_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the distance to the target into one term per sample, for per-sample (DP-SGD) losses.

    Within group g of size n, sample i has rank r_ik among the projections on direction k. Its term is

        l_i = (1/K) sum_k | theta_k . x_i - Q_g,k((r_ik + 0.5) / n) |,

    with Q_g,k the piecewise-linear interpolation of the target quantiles. The mean of l_i over the
    group is the midpoint rule for the 1-D integral int_0^1 |F_x^-1(u) - Q(u)| du, so it approximates D_g
    and equals it when n = M and the target levels are the midpoints.

    NOTE: the ranks come from the batch (detached), so a sample's term depends on the other samples of its
    group through its rank, by one position per sample added or removed. The gradient of l_i flows only
    through sample i's own features.

    Returns:
        ``(terms, covered)``: terms (N,) with zero for samples whose group the target lacks, and covered
        (N,) bool, true where the target has the sample's group.
    """
    names, projected, levels, quantiles, terms, covered = _per_sample_setup(features, groups, target, group_names)
    for name in sorted_unique(names):
        position = target.group_index(name)
        if position is None:
            continue
        index = torch.as_tensor(np.flatnonzero(names == name), device=features.device)
        values = projected[index]
        with torch.no_grad():
            ranks = values.argsort(dim=0).argsort(dim=0).to(values.dtype)
            at = (ranks + 0.5) / values.shape[0]
            matched = _interpolate_quantiles(levels, quantiles[position], at)
        terms = terms.index_put((index,), (values - matched).abs().mean(dim=1))
        covered[index] = True
    return terms, covered


def per_sample_terms_from_reference(
    features: torch.Tensor,
    groups: torch.Tensor | np.ndarray | Sequence,
    target: SlicedQuantileTarget,
    reference: dict[str, torch.Tensor],
    *,
    group_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the distance to the target into per-sample terms whose ranks come from a reference set.

    Sample i of group g, projected on direction k to v_ik, takes the position
    u_ik = (#{r : reference[g][r, k] < v_ik} + 0.5) / (R + 1) among the R reference values and the term

        l_i = (1/K) sum_k | v_ik - Q_g,k(u_ik) |.

    When the reference has the distribution of the batch features, u is their quantile level and l_i
    pushes each value along the 1-D transport map to the target. Unlike :func:`per_sample_shift_terms`,
    l_i depends on sample i, the target and the reference only, so with a reference that does not depend
    on the private records (images generated by the model) each term is a per-example loss as DP-SGD
    needs.

    Args:
        features: (N, D) features; gradients flow through them.
        groups: N group names, or indices into ``group_names``.
        target: The fixed real-side statistic.
        reference: Group name -> (R, K) values already projected on ``target.projections``.

    Returns:
        ``(terms, covered)`` as for :func:`per_sample_shift_terms`; a sample is covered when both the target
        and the reference have its group.
    """
    names, projected, levels, quantiles, terms, covered = _per_sample_setup(features, groups, target, group_names)
    for name in sorted_unique(names):
        position = target.group_index(name)
        values_reference = reference.get(str(name))
        if position is None or values_reference is None or len(values_reference) == 0:
            continue
        index = torch.as_tensor(np.flatnonzero(names == name), device=features.device)
        values = projected[index]
        with torch.no_grad():
            ordered = values_reference.to(dtype=features.dtype, device=features.device).sort(dim=0).values
            below = torch.searchsorted(ordered.T.contiguous(), values.detach().T.contiguous()).T.to(values.dtype)
            at = (below + 0.5) / (ordered.shape[0] + 1)
            matched = _interpolate_quantiles(levels, quantiles[position], at)
        terms = terms.index_put((index,), (values - matched).abs().mean(dim=1))
        covered[index] = True
    return terms, covered


def shift_loss(distance: GroupwiseDistance | torch.Tensor, *, lambda_shift: float) -> torch.Tensor:
    """Return L_shift = lambda_s * D, with D the weighted mean of a :class:`GroupwiseDistance` or a tensor."""
    if lambda_shift < 0:
        raise ValueError(f"Invalid lambda_shift {lambda_shift}: it must be >= 0.")
    value = distance.mean if isinstance(distance, GroupwiseDistance) else distance
    return lambda_shift * value
