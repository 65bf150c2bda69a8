"""Time the audit's exact nearest-neighbour search against the bare blocked matrix product + top-k.

Both run in the same process on the same random embeddings (10k queries x 100k references, dimension
128 by default). The bare operation is ``torch.topk(queries_block @ references.T, k)`` over the same
query blocks that :func:`phenodiff.privacy.audit.search.nearest_neighbors` picks for the memory bound,
so the ratio shows the search's own overhead: input checks, the unit-norm test, and the exact
distance recomputation for the selected neighbours. Each timing is the best of ``--repeats``
interleaved runs.

Usage::

    python benchmarks/nn_search.py [--queries 10000] [--references 100000] [--dim 128] [--k 1]

This is a benchmark, not a test: it asserts nothing and prints the timings and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from phenodiff.privacy.audit.search import DEFAULT_BLOCK_BYTES, nearest_neighbors


def bare_blocked_topk(queries: torch.Tensor, references: torch.Tensor, *, k: int, query_block: int) -> torch.Tensor:
    """Return the top-k inner-product indices by one matrix product + top-k per query block, nothing else."""
    references_t = references.T.contiguous()
    indices = torch.empty((queries.shape[0], k), dtype=torch.long)
    for start in range(0, queries.shape[0], query_block):
        stop = min(start + query_block, queries.shape[0])
        indices[start:stop] = torch.topk(queries[start:stop] @ references_t, k, dim=1).indices
    return indices


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000, help="number of query (synthetic) embeddings")
    parser.add_argument("--references", type=int, default=100_000, help="number of reference (training) embeddings")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
    parser.add_argument("--k", type=int, default=1, help="neighbours per query")
    parser.add_argument("--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES, help="memory bound of one score block, in bytes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the best is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random embeddings")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)
    references = torch.nn.functional.normalize(torch.randn(args.references, args.dim, generator=generator), dim=1)
    # The same query block as nearest_neighbors chooses when all references fit in one block.
    query_block = max(1, (args.block_bytes // 4) // args.references)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"sizes: {args.queries} queries x {args.references} references, dim {args.dim}, k {args.k}, query block {query_block}")

    # Warm-up so that neither timing pays for first-call allocation.
    bare_blocked_topk(queries[:query_block], references, k=args.k, query_block=query_block)

    # Interleave the three timings so that drifts of the machine (frequency, other load) hit all alike.
    unnormalised_queries, unnormalised_references = queries * 2.0, references * 3.0
    bare_seconds = search_seconds = augmented_seconds = float("inf")
    for _ in range(args.repeats):
        seconds, bare_indices = timed(lambda: bare_blocked_topk(queries, references, k=args.k, query_block=query_block))
        bare_seconds = min(bare_seconds, seconds)
        seconds, result = timed(lambda: nearest_neighbors(queries, references, k=args.k, block_bytes=args.block_bytes))
        search_seconds = min(search_seconds, seconds)
        seconds, _ = timed(lambda: nearest_neighbors(unnormalised_queries, unnormalised_references, k=args.k, block_bytes=args.block_bytes))
        augmented_seconds = min(augmented_seconds, seconds)

    agreement = (result.indices[:, 0] == bare_indices[:, 0]).float().mean().item()
    print(f"bare matmul + top-k:               {bare_seconds:8.3f} s")
    print(f"nearest_neighbors (unit rows):     {search_seconds:8.3f} s   ratio {search_seconds / bare_seconds:.3f}x")
    print(f"nearest_neighbors (any norm, d+1): {augmented_seconds:8.3f} s   ratio {augmented_seconds / bare_seconds:.3f}x")
    print(f"nearest neighbour agreement with the bare operation: {agreement:.6f}")


if __name__ == "__main__":
    main()
