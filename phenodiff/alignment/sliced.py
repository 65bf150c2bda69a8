"""Sliced Wasserstein-1 distance between feature embeddings, per phenotype group, computed with POT.

The distance between real and synthetic feature distributions is the Wasserstein-1 distance

    W1(P_r, P_s) = sup over 1-Lipschitz phi of | E phi(X_r) - E phi(X_s) |,

estimated by its sliced form (Bonneel et al., 2015, "Sliced and Radon Wasserstein barycenters of
measures"): project both feature sets on K random unit directions theta_k and average the exact 1-D
distances,

    SW1(P_r, P_s) = (1/K) sum_k W1(theta_k # P_r, theta_k # P_s).

Each 1-D term is a sort, so the estimate is cheap and differentiable with POT's torch backend
(``ot.sliced_wasserstein_distance`` and ``ot.wasserstein_1d``), which is what a generator loss needs.

Why sliced W1 rather than entropic OT: with POT 0.9.7 on a 2-core CPU, ``ot.sinkhorn`` on float32 torch
tensors ran all 999 iterations, because its default stop threshold (1e-9) is below float32 resolution. In
float64 it stopped after about 10 (230 ms against 4.6 ms in the project's measurement). Sliced W1 needs
no iterations: 2000 x 512 features with 256 projections took 0.1 to 0.3 s on the same kind of machine.

The projections come from a seeded ``torch.Generator``, so one seed gives the same directions on every
call and for the real-side target, and the global RNG is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import ot
import torch

from .groups import group_name_array, sorted_unique

DEFAULT_NUM_PROJECTIONS = 256
WEIGHTINGS = ("count", "uniform")


def random_projections(
    dim: int,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``num_projections`` directions uniformly on the unit sphere of R^dim.

    Returns a (dim, num_projections) tensor with unit-norm columns, the layout that POT's ``projections``
    argument expects. The same ``seed`` always gives the same directions.
    """
    if dim < 1:
        raise ValueError(f"Invalid dim {dim}: the feature dimension must be at least 1.")
    if num_projections < 1:
        raise ValueError(f"Invalid num_projections {num_projections}: it must be at least 1.")
    generator = torch.Generator().manual_seed(int(seed))
    directions = torch.randn(dim, num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return directions.to(dtype=dtype, device=device)


def _check_features(features: torch.Tensor, argument: str) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor of shape (N, D), got {type(features).__name__}.")
    if features.ndim != 2:
        raise ValueError(f"{argument} must have shape (N, D), got shape {tuple(features.shape)}.")
    if features.shape[0] == 0:
        raise ValueError(f"{argument} is empty: the distance needs at least one sample.")


def _resolve_projections(
    projections: torch.Tensor | None, dim: int, num_projections: int, seed: int, like: torch.Tensor
) -> torch.Tensor:
    if projections is None:
        return random_projections(dim, num_projections, seed=seed, dtype=like.dtype, device=like.device)
    if projections.ndim != 2 or projections.shape[0] != dim:
        raise ValueError(
            f"projections must have shape (D, K) with D = {dim} (the feature dimension), got {tuple(projections.shape)}."
        )
    return projections.to(dtype=like.dtype, device=like.device)


def sliced_wasserstein(
    synthetic: torch.Tensor,
    real: torch.Tensor,
    *,
    projections: torch.Tensor | None = None,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    seed: int = 0,
) -> torch.Tensor:
    """Compute the sliced Wasserstein-1 distance between two feature sets with POT.

    Args:
        synthetic: (N, D) features; gradients flow through it.
        real: (M, D) features.
        projections: (D, K) unit directions; drawn with :func:`random_projections` from ``seed`` when None.
        num_projections: K when ``projections`` is None.
        seed: Seed of the directions when ``projections`` is None.

    Returns:
        A 0-dim tensor, ``(1/K) sum_k W1`` of the projected sets. For D = 1 the two directions are +1 and
        -1, so the value is the exact 1-D Wasserstein-1 distance.
    """
    _check_features(synthetic, "synthetic")
    _check_features(real, "real")
    if synthetic.shape[1] != real.shape[1]:
        raise ValueError(
            f"synthetic and real features differ in dimension: {synthetic.shape[1]} and {real.shape[1]}."
        )
    real = real.to(dtype=synthetic.dtype, device=synthetic.device)
    directions = _resolve_projections(projections, synthetic.shape[1], num_projections, seed, synthetic)
    return ot.sliced_wasserstein_distance(synthetic, real, projections=directions, p=1)


@dataclass
class GroupwiseDistance:
    """Distances per phenotype group and their weighted mean.

    Attributes:
        per_group: Group name to a 0-dim tensor (differentiable when the synthetic features are).
        counts: Group name to the number of synthetic samples in that group.
        weights: Group name to its weight in ``mean`` (the weights sum to 1).
        mean: ``sum_g weights[g] * per_group[g]``.
        skipped: Group name to the reason it was left out (for example no real samples).
    """

    per_group: dict[str, torch.Tensor]
    counts: dict[str, int]
    weights: dict[str, float]
    mean: torch.Tensor
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return plain floats for JSON reports."""
        return {
            "per_group": {name: float(value.detach()) for name, value in self.per_group.items()},
            "counts": dict(self.counts),
            "weights": dict(self.weights),
            "mean": float(self.mean.detach()),
            "skipped": dict(self.skipped),
        }


def _group_weights(counts: dict[str, int], weighting: str) -> dict[str, float]:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Invalid weighting {weighting!r}; valid options are {list(WEIGHTINGS)}.")
    if weighting == "uniform":
        return {name: 1.0 / len(counts) for name in counts}
    total = sum(counts.values())
    return {name: count / total for name, count in counts.items()}


def _weighted_mean(per_group: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return torch.stack([per_group[name] * weights[name] for name in per_group]).sum()


def groupwise_sliced_wasserstein(
    synthetic: torch.Tensor,
    synthetic_groups: torch.Tensor | np.ndarray | Sequence,
    real: torch.Tensor,
    real_groups: torch.Tensor | np.ndarray | Sequence,
    *,
    group_names: Sequence[str] | None = None,
    projections: torch.Tensor | None = None,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    seed: int = 0,
    weighting: Literal["count", "uniform"] = "count",
    min_group_size: int = 1,
) -> GroupwiseDistance:
    """Compute the sliced W1 distance within each phenotype group, and their weighted mean.

    A group is compared only when both sides have at least ``min_group_size`` samples of it. Every group
    uses the same projections, so values are comparable across groups.

    Args:
        synthetic: (N, D) synthetic features.
        synthetic_groups: N group names, or N indices into ``group_names``.
        real: (M, D) real features.
        real_groups: M group names or indices.
        group_names: Names for integer group indices, for example ``PhenoTorchDataset.groups``.
        weighting: ``count`` weights each group by its number of synthetic samples, ``uniform`` equally.
        min_group_size: Minimum samples per side for a group to be compared.

    Raises:
        ValueError: no group has enough samples on both sides.
    """
    _check_features(synthetic, "synthetic")
    _check_features(real, "real")
    if synthetic.shape[1] != real.shape[1]:
        raise ValueError(
            f"synthetic and real features differ in dimension: {synthetic.shape[1]} and {real.shape[1]}."
        )
    synthetic_names = group_name_array(
        synthetic_groups, num_samples=synthetic.shape[0], group_names=group_names, argument="synthetic_groups"
    )
    real_names = group_name_array(real_groups, num_samples=real.shape[0], group_names=group_names, argument="real_groups")
    directions = _resolve_projections(projections, synthetic.shape[1], num_projections, seed, synthetic)
    real = real.to(dtype=synthetic.dtype, device=synthetic.device)

    per_group: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name in sorted_unique(np.concatenate([synthetic_names, real_names])):
        synthetic_mask = synthetic_names == name
        real_mask = real_names == name
        num_synthetic, num_real = int(synthetic_mask.sum()), int(real_mask.sum())
        if num_synthetic < min_group_size or num_real < min_group_size:
            skipped[name] = (
                f"{num_synthetic} synthetic and {num_real} real samples; at least {min_group_size} of each are needed"
            )
            continue
        synthetic_index = torch.as_tensor(np.flatnonzero(synthetic_mask), device=synthetic.device)
        real_index = torch.as_tensor(np.flatnonzero(real_mask), device=real.device)
        per_group[name] = ot.sliced_wasserstein_distance(
            synthetic[synthetic_index], real[real_index], projections=directions, p=1
        )
        counts[name] = num_synthetic
    if not per_group:
        raise ValueError(
            f"No group has at least {min_group_size} synthetic and real samples; group sizes: {skipped}."
        )
    weights = _group_weights(counts, weighting)
    return GroupwiseDistance(per_group, counts, weights, _weighted_mean(per_group, weights), skipped)
