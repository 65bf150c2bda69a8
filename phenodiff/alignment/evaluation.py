"""Evaluation metrics between real and synthetic feature embeddings.

- per-group sliced Wasserstein-1 (the alignment distance, see :mod:`phenodiff.alignment.sliced`);
- the Frechet feature distance between Gaussians fitted to both sets (the FID formula of Heusel et al.,
  2017, as in their reference code bioinf-jku/TTUR ``fid.py``, applied to any embedding);
- precision, recall, density and coverage from k-nearest-neighbour balls (Naeem et al., 2020, "Reliable
  fidelity and diversity metrics for generative models", ICML).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors

from .sliced import DEFAULT_NUM_PROJECTIONS, groupwise_sliced_wasserstein

DEFAULT_NEAREST_K = 5


def _as_matrix(features, argument: str, *, min_rows: int = 1) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{argument} must have shape (N, D), got shape {array.shape}.")
    if array.shape[0] < min_rows:
        raise ValueError(f"{argument} has {array.shape[0]} rows; this metric needs at least {min_rows}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{argument} contains NaN or infinite values.")
    return array


def _matrix_sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(real, synthetic) -> float:
    """Compute the Frechet distance between Gaussians fitted to two feature sets.

        FD = ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r^{1/2} S_s S_r^{1/2})^{1/2})

    ``Tr((S_r S_s)^{1/2})`` equals the trace of the symmetric form used here. The symmetric form is
    computed with eigendecompositions, so it stays real and needs no offset when a covariance is singular,
    which happens whenever N <= D.

    Args:
        real: (N, D) features, array or tensor; N >= 2.
        synthetic: (M, D) features; M >= 2.
    """
    real = _as_matrix(real, "real", min_rows=2)
    synthetic = _as_matrix(synthetic, "synthetic", min_rows=2)
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"real and synthetic features differ in dimension: {real.shape[1]} and {synthetic.shape[1]}.")
    mean_difference = real.mean(axis=0) - synthetic.mean(axis=0)
    covariance_real = np.atleast_2d(np.cov(real, rowvar=False))
    covariance_synthetic = np.atleast_2d(np.cov(synthetic, rowvar=False))
    root_real = _matrix_sqrt_psd(covariance_real)
    middle = root_real @ covariance_synthetic @ root_real
    trace_cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    value = mean_difference @ mean_difference + np.trace(covariance_real) + np.trace(covariance_synthetic) - 2 * trace_cross
    return float(max(value, 0.0))


@dataclass(frozen=True)
class FidelityDiversity:
    """Precision, recall, density and coverage (Naeem et al., 2020), each in [0, 1] except density (>= 0)."""

    precision: float
    recall: float
    density: float
    coverage: float
    nearest_k: int

    def to_dict(self) -> dict:
        return asdict(self)


def _kth_neighbour_radii(features: np.ndarray, nearest_k: int) -> np.ndarray:
    # The query set is the fitted set, so the first neighbour is the point itself at distance 0.
    distances, _ = NearestNeighbors(n_neighbors=nearest_k + 1).fit(features).kneighbors(features)
    return distances[:, -1]


def precision_recall_density_coverage(real, synthetic, *, nearest_k: int = DEFAULT_NEAREST_K) -> FidelityDiversity:
    """Compute precision, recall, density and coverage from k-nearest-neighbour balls.

    With r_i the distance from real sample X_i to its k-th nearest real neighbour and s_j the same for
    synthetic sample Y_j (Naeem et al., 2020):

    - precision = (1/M) sum_j 1[exists i: ||Y_j - X_i|| < r_i]
    - recall    = (1/N) sum_i 1[exists j: ||X_i - Y_j|| < s_j]
    - density   = (1/(k M)) sum_j sum_i 1[||Y_j - X_i|| < r_i]
    - coverage  = (1/N) sum_i 1[min_j ||X_i - Y_j|| < r_i]

    The strict inequality follows the authors' reference code (clovaai/generative-evaluation-prdc).
    Distances are Euclidean and computed in chunks with ``sklearn.metrics.pairwise_distances_chunked``,
    so memory stays bounded for large sets.

    Args:
        real: (N, D) features, N > nearest_k.
        synthetic: (M, D) features, M > nearest_k.
        nearest_k: k of the neighbour balls.
    """
    if nearest_k < 1:
        raise ValueError(f"Invalid nearest_k {nearest_k}: it must be at least 1.")
    real = _as_matrix(real, "real", min_rows=nearest_k + 1)
    synthetic = _as_matrix(synthetic, "synthetic", min_rows=nearest_k + 1)
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"real and synthetic features differ in dimension: {real.shape[1]} and {synthetic.shape[1]}.")
    real_radii = _kth_neighbour_radii(real, nearest_k)
    synthetic_radii = _kth_neighbour_radii(synthetic, nearest_k)

    # Rows are synthetic samples: count the real balls that contain each one.
    balls_containing = np.concatenate(
        list(
            pairwise_distances_chunked(
                synthetic, real, reduce_func=lambda chunk, start: (chunk < real_radii[None, :]).sum(axis=1)
            )
        )
    )
    # Rows are real samples: is any synthetic ball around them?
    inside_synthetic_ball = np.concatenate(
        list(
            pairwise_distances_chunked(
                real, synthetic, reduce_func=lambda chunk, start: (chunk < synthetic_radii[None, :]).any(axis=1)
            )
        )
    )
    nearest_synthetic, _ = NearestNeighbors(n_neighbors=1).fit(synthetic).kneighbors(real)

    return FidelityDiversity(
        precision=float((balls_containing > 0).mean()),
        recall=float(inside_synthetic_ball.mean()),
        density=float(balls_containing.sum() / (nearest_k * synthetic.shape[0])),
        coverage=float((nearest_synthetic[:, 0] < real_radii).mean()),
        nearest_k=nearest_k,
    )


def evaluate_alignment(
    real: torch.Tensor | np.ndarray,
    real_groups: Sequence | np.ndarray | torch.Tensor,
    synthetic: torch.Tensor | np.ndarray,
    synthetic_groups: Sequence | np.ndarray | torch.Tensor,
    *,
    group_names: Sequence[str] | None = None,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    seed: int = 0,
    nearest_k: int = DEFAULT_NEAREST_K,
    min_group_size: int = 1,
) -> dict:
    """Report per-group sliced W1, the Frechet distance and precision/recall/density/coverage.

    The Frechet distance and the k-NN metrics use all samples. The sliced distances use the same
    ``seed`` directions for every group.

    Returns:
        ``{"sliced_wasserstein": GroupwiseDistance.to_dict(), "frechet_distance": float,
        "precision_recall_density_coverage": FidelityDiversity.to_dict()}``.
    """
    real_tensor = torch.as_tensor(_as_matrix(real, "real"))
    synthetic_tensor = torch.as_tensor(_as_matrix(synthetic, "synthetic"))
    with torch.no_grad():
        sliced = groupwise_sliced_wasserstein(
            synthetic_tensor,
            synthetic_groups,
            real_tensor,
            real_groups,
            group_names=group_names,
            num_projections=num_projections,
            seed=seed,
            min_group_size=min_group_size,
        )
    return {
        "sliced_wasserstein": sliced.to_dict(),
        "frechet_distance": frechet_distance(real_tensor.numpy(), synthetic_tensor.numpy()),
        "precision_recall_density_coverage": precision_recall_density_coverage(
            real_tensor.numpy(), synthetic_tensor.numpy(), nearest_k=nearest_k
        ).to_dict(),
    }
