"""Alignment of synthetic and real feature distributions: sliced Wasserstein-1 per phenotype group, the
fixed-target shift loss L_shift, and evaluation metrics (Frechet distance, precision/recall/density/coverage)."""

from .evaluation import FidelityDiversity, evaluate_alignment, frechet_distance, precision_recall_density_coverage
from .sliced import (
    DEFAULT_NUM_PROJECTIONS,
    GroupwiseDistance,
    groupwise_sliced_wasserstein,
    random_projections,
    sliced_wasserstein,
)
from .target import (
    SlicedQuantileTarget,
    midpoint_levels,
    per_sample_shift_terms,
    per_sample_terms_from_reference,
    shift_loss,
    sliced_wasserstein_to_target,
)

__all__ = [
    "DEFAULT_NUM_PROJECTIONS",
    "FidelityDiversity",
    "GroupwiseDistance",
    "SlicedQuantileTarget",
    "evaluate_alignment",
    "frechet_distance",
    "groupwise_sliced_wasserstein",
    "midpoint_levels",
    "per_sample_shift_terms",
    "per_sample_terms_from_reference",
    "precision_recall_density_coverage",
    "random_projections",
    "shift_loss",
    "sliced_wasserstein",
    "sliced_wasserstein_to_target",
]
