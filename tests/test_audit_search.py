"""Tests of the exact blocked nearest-neighbour search against brute force."""

import numpy as np
import pytest
import torch

from phenodiff.privacy.audit.search import has_unit_rows, nearest_neighbors
from phenodiff.privacy.errors import AuditInputError


def brute_force(queries: torch.Tensor, references: torch.Tensor, k: int):
    distances = torch.cdist(queries.double(), references.double())
    return torch.topk(distances, k, dim=1, largest=False)


@pytest.mark.parametrize("normalised", [False, True])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize(
    "block_bytes",
    [
        2**30,  # every reference in one block
        4 * 3000,  # two queries per block, references whole
        4 * 1000,  # references blocked too: a running top-k is merged
    ],
)
def test_search_matches_brute_force(normalised, k, block_bytes):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(150, 24, generator=generator) * 3.0
    references = torch.randn(1200, 24, generator=generator) * 3.0
    if normalised:
        queries = torch.nn.functional.normalize(queries, dim=1)
        references = torch.nn.functional.normalize(references, dim=1)
    expected_distances, expected_indices = brute_force(queries, references, k)

    result = nearest_neighbors(queries, references, k=k, block_bytes=block_bytes)

    assert result.indices.shape == (150, k)
    assert torch.equal(result.indices, expected_indices)
    assert torch.allclose(result.distances.double(), expected_distances, atol=1e-5)
    assert torch.all(result.distances[:, 1:] >= result.distances[:, :-1])


def test_search_finds_exact_duplicates_at_zero():
    references = torch.randn(500, 16)
    picked = torch.tensor([3, 77, 499])
    result = nearest_neighbors(references[picked], references, k=1)
    assert torch.equal(result.indices[:, 0], picked)
    assert torch.all(result.distances[:, 0] == 0.0)


def test_search_accepts_numpy():
    rng = np.random.default_rng(1)
    queries, references = rng.normal(size=(20, 8)), rng.normal(size=(100, 8))
    result = nearest_neighbors(queries, references, k=2)
    expected_distances, expected_indices = brute_force(torch.from_numpy(queries), torch.from_numpy(references), 2)
    assert torch.equal(result.indices, expected_indices)


def test_unit_row_detection():
    rows = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    assert has_unit_rows(rows)
    assert not has_unit_rows(rows * 1.01)


def test_search_rejects_bad_inputs():
    with pytest.raises(AuditInputError, match="dimension"):
        nearest_neighbors(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(AuditInputError, match="k must be"):
        nearest_neighbors(torch.randn(3, 4), torch.randn(5, 4), k=6)
    with pytest.raises(AuditInputError, match="NaN"):
        nearest_neighbors(torch.full((3, 4), float("nan")), torch.randn(5, 4))
