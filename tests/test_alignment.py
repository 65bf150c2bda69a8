import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from phenodiff.alignment import (
    SlicedQuantileTarget,
    evaluate_alignment,
    frechet_distance,
    groupwise_sliced_wasserstein,
    midpoint_levels,
    per_sample_shift_terms,
    per_sample_terms_from_reference,
    precision_recall_density_coverage,
    random_projections,
    shift_loss,
    sliced_wasserstein,
    sliced_wasserstein_to_target,
)


def test_projections_seeded_unit_norm():
    first = random_projections(16, 32, seed=3)
    second = random_projections(16, 32, seed=3)
    other = random_projections(16, 32, seed=4)
    assert first.shape == (16, 32)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.allclose(first.norm(dim=0), torch.ones(32), atol=1e-6)


def test_projections_leave_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    random_projections(8, 8, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_sliced_zero_for_identical_sets():
    features = torch.randn(50, 12, generator=torch.Generator().manual_seed(0))
    assert float(sliced_wasserstein(features, features.clone())) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("sizes", [(40, 40), (37, 91)])
def test_sliced_matches_exact_1d(sizes):
    generator = torch.Generator().manual_seed(1)
    first = torch.randn(sizes[0], 1, generator=generator, dtype=torch.float64)
    second = 2.0 * torch.randn(sizes[1], 1, generator=generator, dtype=torch.float64) + 0.7
    expected = scipy.stats.wasserstein_distance(first[:, 0].numpy(), second[:, 0].numpy())
    assert float(sliced_wasserstein(first, second, num_projections=8)) == pytest.approx(expected, rel=1e-9)


def test_sliced_shift_detected():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(200, 4, generator=generator)
    near = float(sliced_wasserstein(base, torch.randn(200, 4, generator=generator)))
    far = float(sliced_wasserstein(base, torch.randn(200, 4, generator=generator) + 3.0))
    assert far > near + 1.0


def test_sliced_is_differentiable():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(64, 6, generator=generator)
    synthetic = (torch.randn(64, 6, generator=generator) + 2.0).requires_grad_()
    optimizer = torch.optim.Adam([synthetic], lr=0.1)
    start = float(sliced_wasserstein(synthetic.detach(), real, num_projections=64))
    for _ in range(30):
        optimizer.zero_grad()
        sliced_wasserstein(synthetic, real, num_projections=64).backward()
        optimizer.step()
    assert float(sliced_wasserstein(synthetic.detach(), real, num_projections=64)) < 0.5 * start


def test_sliced_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="empty"):
        sliced_wasserstein(torch.zeros(0, 2), torch.zeros(3, 2))


def test_groupwise_values_and_weighted_mean():
    generator = torch.Generator().manual_seed(4)
    synthetic = torch.randn(30, 5, generator=generator)
    real = torch.randn(40, 5, generator=generator) + 0.5
    synthetic_groups = ["a"] * 10 + ["b"] * 20
    real_groups = ["a"] * 15 + ["b"] * 20 + ["c"] * 5
    projections = random_projections(5, 64, seed=9)

    result = groupwise_sliced_wasserstein(synthetic, synthetic_groups, real, real_groups, projections=projections)

    expected_a = float(sliced_wasserstein(synthetic[:10], real[:15], projections=projections))
    expected_b = float(sliced_wasserstein(synthetic[10:], real[15:35], projections=projections))
    assert float(result.per_group["a"]) == pytest.approx(expected_a, rel=1e-6)
    assert float(result.per_group["b"]) == pytest.approx(expected_b, rel=1e-6)
    assert result.counts == {"a": 10, "b": 20}
    assert float(result.mean) == pytest.approx((10 * expected_a + 20 * expected_b) / 30, rel=1e-6)
    assert "c" in result.skipped


def test_groupwise_uniform_weighting_and_indices():
    generator = torch.Generator().manual_seed(5)
    synthetic = torch.randn(12, 3, generator=generator)
    real = torch.randn(12, 3, generator=generator)
    groups = torch.tensor([0] * 4 + [1] * 8)
    result = groupwise_sliced_wasserstein(synthetic, groups, real, groups, group_names=["young", "old"], weighting="uniform")
    assert set(result.per_group) == {"young", "old"}
    assert result.weights == {"old": 0.5, "young": 0.5}


def test_groupwise_rejects_no_common_group():
    with pytest.raises(ValueError, match="No group"):
        groupwise_sliced_wasserstein(torch.zeros(2, 2), ["a", "a"], torch.ones(2, 2), ["b", "b"])
    with pytest.raises(ValueError, match="weighting"):
        groupwise_sliced_wasserstein(torch.zeros(2, 2), ["a", "a"], torch.ones(2, 2), ["a", "a"], weighting="median")


def test_target_quantiles_match_numpy():
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(101, 4, generator=generator, dtype=torch.float64)
    projections = random_projections(4, 8, seed=0, dtype=torch.float64)
    target = SlicedQuantileTarget.from_features(features, ["g"] * 101, projections=projections, num_quantiles=10)
    projected = (features @ projections).numpy()
    expected = np.quantile(projected, midpoint_levels(10, dtype=torch.float64).numpy(), axis=0)
    assert target.group_names == ("g",)
    assert np.allclose(target.quantiles[0].numpy(), expected)


def test_target_validates_shapes():
    projections = random_projections(3, 4, seed=0)
    with pytest.raises(ValueError, match="quantiles must have shape"):
        SlicedQuantileTarget.from_released(torch.zeros(2, 5, 3), projections=projections, group_names=["a", "b"])
    with pytest.raises(ValueError, match="levels"):
        SlicedQuantileTarget(projections, torch.tensor([0.5, 0.2]), torch.zeros(1, 2, 4), ("a",))


def test_distance_to_target_matches_two_sample_distance():
    # With n = M midpoint quantiles of a set, the quantile atoms are that set's projected values, so the
    # distance to the target equals the two-sample sliced distance on the same projections.
    generator = torch.Generator().manual_seed(7)
    real = torch.randn(32, 3, generator=generator, dtype=torch.float64)
    synthetic = torch.randn(32, 3, generator=generator, dtype=torch.float64) + 1.0
    projections = random_projections(3, 16, seed=2, dtype=torch.float64)
    target = SlicedQuantileTarget.from_features(real, ["a"] * 32, projections=projections, num_quantiles=32)
    # torch.quantile interpolates between order statistics, so compare with an explicit quantile set.
    sorted_projected = (real @ projections).sort(dim=0).values
    exact = SlicedQuantileTarget.from_released(sorted_projected[None], projections=projections, group_names=["a"])

    distance = sliced_wasserstein_to_target(synthetic, ["a"] * 32, exact)
    two_sample = sliced_wasserstein(synthetic, real, projections=projections)
    assert float(distance.mean) == pytest.approx(float(two_sample), rel=1e-9)
    assert float(sliced_wasserstein_to_target(synthetic, ["a"] * 32, target).mean) > 0.5


def test_per_sample_terms_average_to_distance():
    generator = torch.Generator().manual_seed(8)
    projections = random_projections(4, 16, seed=3, dtype=torch.float64)
    quantiles = torch.randn(2, 24, 16, generator=generator, dtype=torch.float64).sort(dim=1).values
    target = SlicedQuantileTarget.from_released(quantiles, projections=projections, group_names=["a", "b"])
    synthetic = torch.randn(48, 4, generator=generator, dtype=torch.float64).requires_grad_()
    groups = ["a"] * 24 + ["b"] * 24

    terms, covered = per_sample_shift_terms(synthetic, groups, target)
    batch = sliced_wasserstein_to_target(synthetic, groups, target)

    assert terms.shape == (48,)
    assert bool(covered.all())
    assert terms.mean().item() == pytest.approx(batch.mean.item(), rel=1e-9)
    terms.sum().backward()
    assert synthetic.grad is not None
    assert float(synthetic.grad.abs().sum()) > 0


def test_per_sample_terms_skip_unknown_group():
    projections = random_projections(2, 4, seed=0)
    target = SlicedQuantileTarget.from_features(torch.randn(10, 2), ["a"] * 10, projections=projections, num_quantiles=4)
    terms, covered = per_sample_shift_terms(torch.randn(3, 2), ["a", "z", "a"], target)
    assert covered.tolist() == [True, False, True]
    assert float(terms[1]) == 0.0
    distance = sliced_wasserstein_to_target(torch.randn(3, 2), ["a", "z", "a"], target)
    assert "z" in distance.skipped


def test_reference_terms_ignore_other_samples():
    generator = torch.Generator().manual_seed(4)
    projections = random_projections(3, 5, seed=1)
    target = SlicedQuantileTarget.from_features(torch.randn(200, 3, generator=generator), ["a"] * 200, projections=projections)
    reference = {"a": torch.randn(40, 3, generator=generator) @ projections}
    batch = torch.randn(6, 3, generator=generator)
    changed = batch.clone()
    changed[1:] = 10 * torch.randn(5, 3, generator=generator)

    alone, _ = per_sample_terms_from_reference(batch[:1], ["a"], target, reference)
    with_batch, _ = per_sample_terms_from_reference(batch, ["a"] * 6, target, reference)
    with_changed, _ = per_sample_terms_from_reference(changed, ["a"] * 6, target, reference)
    assert float(with_batch[0]) == pytest.approx(float(alone[0]))
    assert float(with_changed[0]) == pytest.approx(float(alone[0]))


def test_reference_terms_vanish_when_reference_is_target():
    projections = random_projections(2, 3, seed=2)
    real = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5))
    target = SlicedQuantileTarget.from_features(real, ["a"] * 4000, projections=projections, num_quantiles=64)
    shifted = real[:500] + 3.0
    reference = {"a": real @ projections}
    terms_real, covered = per_sample_terms_from_reference(real[:500], ["a"] * 500, target, reference)
    terms_shifted, _ = per_sample_terms_from_reference(shifted, ["a"] * 500, target, {"a": shifted @ projections})
    assert bool(covered.all())
    assert float(terms_real.mean()) < 0.05
    assert float(terms_shifted.mean()) > 1.0


def test_shift_loss_scales_distance():
    distance = groupwise_sliced_wasserstein(torch.randn(8, 2), ["a"] * 8, torch.randn(8, 2) + 1, ["a"] * 8)
    assert float(shift_loss(distance, lambda_shift=0.5)) == pytest.approx(0.5 * float(distance.mean))
    with pytest.raises(ValueError, match="lambda_shift"):
        shift_loss(distance, lambda_shift=-1.0)


def test_frechet_zero_for_identical_sets():
    features = np.random.default_rng(0).normal(size=(200, 6))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_1d_known_answer():
    rng = np.random.default_rng(1)
    first = rng.normal(size=(300, 1))
    second = 3.0 * rng.normal(size=(250, 1)) + 2.0
    expected = (first.mean() - second.mean()) ** 2 + (first.std(ddof=1) - second.std(ddof=1)) ** 2
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_sqrtm_formula():
    rng = np.random.default_rng(2)
    first = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    second = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    cov_first, cov_second = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    root = scipy.linalg.sqrtm(cov_first @ cov_second).real
    difference = first.mean(0) - second.mean(0)
    expected = difference @ difference + np.trace(cov_first + cov_second - 2 * root)
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-6)


def test_prdc_identical_and_disjoint_sets():
    features = np.random.default_rng(3).normal(size=(60, 4))
    same = precision_recall_density_coverage(features, features, nearest_k=3)
    assert same.precision == 1.0
    assert same.recall == 1.0
    assert same.coverage == 1.0
    far = precision_recall_density_coverage(features, features + 100.0, nearest_k=3)
    assert far.precision == 0.0
    assert far.recall == 0.0
    assert far.density == 0.0
    assert far.coverage == 0.0


def test_prdc_matches_brute_force_definition():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(30, 3)) * 1.3 + 0.3
    k = 4
    distance = np.linalg.norm(real[:, None, :] - fake[None, :, :], axis=2)
    real_radii = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, k]
    fake_radii = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=2), axis=1)[:, k]
    inside_real = distance < real_radii[:, None]

    result = precision_recall_density_coverage(real, fake, nearest_k=k)

    assert result.precision == pytest.approx(inside_real.any(axis=0).mean())
    assert result.recall == pytest.approx((distance < fake_radii[None, :]).any(axis=1).mean())
    assert result.density == pytest.approx(inside_real.sum() / (k * fake.shape[0]))
    assert result.coverage == pytest.approx((distance.min(axis=1) < real_radii).mean())


def test_prdc_rejects_too_few_samples():
    with pytest.raises(ValueError, match="at least 6"):
        precision_recall_density_coverage(np.zeros((5, 2)), np.zeros((10, 2)), nearest_k=5)


def test_evaluate_alignment_report():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(80, 4))
    synthetic = rng.normal(size=(60, 4)) + 0.2
    report = evaluate_alignment(real, ["a", "b"] * 40, synthetic, ["a", "b"] * 30, num_projections=32, nearest_k=3)
    assert set(report["sliced_wasserstein"]["per_group"]) == {"a", "b"}
    assert report["frechet_distance"] > 0
    assert 0.0 <= report["precision_recall_density_coverage"]["coverage"] <= 1.0
