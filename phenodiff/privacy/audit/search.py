"""Exact k-nearest-neighbour search in Euclidean distance, by blocked matrix products and top-k.

For queries q and references r, the squared distance expands as
``|q - r|^2 = |q|^2 - 2 q.r + |r|^2``. For a fixed query, ranking references by ``q.r - |r|^2 / 2``
ranks them by distance, and that score is one matrix product of the augmented rows ``[q, 1]`` and
``[r, -|r|^2 / 2]``. When every row has unit L2 norm, as the audit's embeddings do, the ``|r|^2``
term is constant and the score is the plain product ``q.r``. The search then costs one matrix product
and one top-k per block, the same as the bare operation.

Memory is bounded by ``block_bytes``: one block of scores is (query block x reference block) float32.
When the whole reference set fits next to a query block, only queries are blocked. Otherwise
references are blocked too and a running top-k is merged across reference blocks.

Distances of the selected neighbours are recomputed directly as ``|q - r|`` in float32, so the
returned distances do not carry the cancellation error of the expansion. The ranking itself is done
on float32 scores, so two references whose distances differ by less than float32 rounding may swap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import AuditInputError

# 256 MiB of float32 scores per block by default: 655 queries x 100k references.
DEFAULT_BLOCK_BYTES = 256 * 2**20

# Rows whose norms are within this tolerance of 1 are treated as unit vectors.
_UNIT_NORM_TOLERANCE = 1e-4


@dataclass
class NeighborResult:
    """Output of :func:`nearest_neighbors`.

    Attributes:
        distances: (Q, k) float32 Euclidean distances, ascending along each row.
        indices: (Q, k) int64 indices into the references.
    """

    distances: torch.Tensor
    indices: torch.Tensor


def as_embedding_matrix(values: torch.Tensor | np.ndarray, *, name: str) -> torch.Tensor:
    """Return ``values`` as a contiguous (n, d) float32 tensor, or raise :class:`AuditInputError`."""
    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    tensor = tensor.detach().to(torch.float32)
    if tensor.ndim != 2 or tensor.shape[1] == 0:
        raise AuditInputError(f"{name} must be an (n, d) matrix with d >= 1, got shape {tuple(tensor.shape)}.")
    # A finite sum implies finite entries because NaN and inf propagate, and it needs no (n, d) mask.
    # Only an overflowing sum of huge finite values falls through to the exact check.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise AuditInputError(f"{name} contains NaN or infinite values; check the embedding function.")
    return tensor.contiguous()


def has_unit_rows(matrix: torch.Tensor) -> bool:
    """Return whether every row of ``matrix`` has L2 norm 1 (within 1e-4)."""
    if matrix.shape[0] == 0:
        return True
    norms = matrix.norm(dim=1)
    return bool(((norms - 1.0).abs() <= _UNIT_NORM_TOLERANCE).all())


def nearest_neighbors(
    queries: torch.Tensor | np.ndarray,
    references: torch.Tensor | np.ndarray,
    *,
    k: int = 1,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> NeighborResult:
    """Find the ``k`` nearest references of every query in Euclidean distance, exactly (no index or approximation).

    Args:
        queries: (Q, d) embeddings, e.g. of synthetic images.
        references: (N, d) embeddings, e.g. of training images. N >= k.
        k: Number of neighbours per query.
        block_bytes: Upper bound on the memory of one block of float32 scores.

    Returns:
        A :class:`NeighborResult` with (Q, k) distances and indices, nearest first.
    """
    queries = as_embedding_matrix(queries, name="queries")
    references = as_embedding_matrix(references, name="references").to(queries.device)
    if queries.shape[1] != references.shape[1]:
        raise AuditInputError(
            f"queries have dimension {queries.shape[1]} but references have {references.shape[1]}; embed both with the same function."
        )
    if isinstance(k, bool) or int(k) != k or not (1 <= k <= references.shape[0]):
        raise AuditInputError(f"k must be an integer in [1, {references.shape[0]}] (the number of references), got {k!r}.")
    if block_bytes < 4 * k:
        raise AuditInputError(f"block_bytes must be at least {4 * k} bytes, got {block_bytes}.")
    k = int(k)
    n_queries, n_references = queries.shape[0], references.shape[0]
    if n_queries == 0:
        empty = torch.empty((0, k))
        return NeighborResult(distances=empty, indices=empty.long())

    # 1. Scores to maximise: q.r for unit rows, else the augmented product q.r - |r|^2 / 2.
    if has_unit_rows(queries) and has_unit_rows(references):
        query_rows, reference_rows = queries, references
    else:
        ones = torch.ones((n_queries, 1), dtype=queries.dtype, device=queries.device)
        query_rows = torch.cat([queries, ones], dim=1)
        reference_rows = torch.cat([references, -0.5 * (references * references).sum(dim=1, keepdim=True)], dim=1)
    reference_rows_t = reference_rows.T.contiguous()

    # 2. Block sizes within the memory bound.
    scores_per_block = max(k, block_bytes // 4)
    if scores_per_block >= n_references:
        reference_block = n_references
        query_block = max(1, scores_per_block // n_references)
    else:
        # Square-ish blocks keep both the matrix product and the top-k merge efficient.
        query_block = max(1, min(n_queries, 1024, math.isqrt(scores_per_block)))
        reference_block = max(k, scores_per_block // query_block)

    # 3. Blocked product and top-k, merged across reference blocks when those are blocked.
    indices = torch.empty((n_queries, k), dtype=torch.long, device=queries.device)
    for start in range(0, n_queries, query_block):
        stop = min(start + query_block, n_queries)
        block = query_rows[start:stop]
        best_scores = best_indices = None
        for ref_start in range(0, n_references, reference_block):
            ref_stop = min(ref_start + reference_block, n_references)
            scores = block @ reference_rows_t[:, ref_start:ref_stop]
            top_scores, top_indices = torch.topk(scores, min(k, ref_stop - ref_start), dim=1)
            top_indices += ref_start
            if best_scores is None:
                best_scores, best_indices = top_scores, top_indices
            else:
                merged_scores = torch.cat([best_scores, top_scores], dim=1)
                merged_indices = torch.cat([best_indices, top_indices], dim=1)
                best_scores, order = torch.topk(merged_scores, k, dim=1)
                best_indices = torch.gather(merged_indices, 1, order)
        indices[start:stop] = best_indices

    # 4. Exact distances of the selected neighbours, and a stable ascending order.
    distances = _selected_distances(queries, references, indices)
    distances, order = torch.sort(distances, dim=1, stable=True)
    return NeighborResult(distances=distances, indices=torch.gather(indices, 1, order))


def _selected_distances(queries: torch.Tensor, references: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    # Gathers (rows x k x d) reference values at a time, at most 2**27 floats (512 MiB).
    distances = torch.empty(indices.shape, dtype=queries.dtype, device=queries.device)
    step = max(1, 2**27 // (indices.shape[1] * queries.shape[1]))
    for start in range(0, queries.shape[0], step):
        stop = min(start + step, queries.shape[0])
        distances[start:stop] = (queries[start:stop, None, :] - references[indices[start:stop]]).norm(dim=2)
    return distances
