"""The L_shift target for DP training: per-group quantiles of projected real features, released with DP.

Features are projected on public random directions, clipped to a public range and counted in a
per-group histogram whose noisy quantiles become the fixed target (see
:func:`~phenodiff.privacy.gaussian_mechanism.release_quantiles`). The release is recorded in the ledger,
so the DP-SGD run that uses the target gets the rest of the budget.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..alignment.target import SlicedQuantileTarget, midpoint_levels
from .accounting import PrivacyLedger
from .gaussian_mechanism import GaussianRelease, release_quantiles

COMPONENT = "shift_target"


def release_shift_target(
    features: torch.Tensor,
    groups: Sequence[str],
    *,
    projections: torch.Tensor,
    bound: float,
    bins: int,
    num_quantiles: int,
    epsilon: float,
    delta: float,
    ledger: PrivacyLedger,
    group_keys: Sequence[str],
) -> tuple[SlicedQuantileTarget, GaussianRelease]:
    """Release the per-group quantiles of ``features @ projections`` and wrap them as the L_shift target.

    Args:
        features: (N, D) private features, one row per training image.
        groups: N group names.
        projections: (D, K) unit directions drawn without looking at the data.
        bound: Public range [-bound, bound] of the projected values; values outside are clipped.
        bins: Histogram bins over that range.
        num_quantiles: M midpoint levels of the target.
        epsilon, delta: Budget of this release.
        ledger: Records the release under ``shift_target``.
        group_keys: The public group list (the schema's declared groups); each gets a histogram, empty or not.

    The noise comes from a generator seeded by the operating system: a seed written next to the release
    would let anyone subtract the noise.
    """
    levels = midpoint_levels(num_quantiles)
    projected = features.detach().float() @ projections.float()
    release = release_quantiles(projected, lower=-bound, upper=bound, bins=bins, quantiles=levels.tolist(), epsilon=epsilon,
                                delta=delta, ledger=ledger, name=COMPONENT, groups=list(groups), group_keys=list(group_keys))
    names = list(group_keys)
    quantiles = torch.stack([torch.as_tensor(release.values[name], dtype=torch.float32) for name in names])
    target = SlicedQuantileTarget.from_released(quantiles, projections=projections.float(), group_names=names, levels=levels)
    return target, release
