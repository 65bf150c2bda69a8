"""Tests of the Gaussian mechanism: calibration, clipping, noise and ledger entries."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant

from phenodiff.privacy.accounting import PrivacyLedger
from phenodiff.privacy.errors import InvalidPrivacyParameterError, MissingSensitivityBoundError
from phenodiff.privacy.gaussian_mechanism import (
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    clip_rows,
    clipped_mean,
    gaussian_delta,
    release_mean,
    release_quantiles,
)

BUDGETS = [(0.1, 1e-5), (0.5, 1e-6), (1.0, 1e-5), (4.0, 1e-5), (20.0, 1e-7)]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("epsilon, delta", BUDGETS)
def test_analytic_sigma_is_tight(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=1.0)
    assert gaussian_delta(noise_std=sigma, epsilon=epsilon, sensitivity=1.0) <= delta
    assert gaussian_delta(noise_std=sigma * 0.999, epsilon=epsilon, sensitivity=1.0) > delta


@pytest.mark.parametrize("epsilon, delta", BUDGETS)
def test_analytic_sigma_agrees_with_opacus_prv(epsilon, delta):
    # One Gaussian release is one step of the subsampled Gaussian mechanism with q = 1 and noise
    # multiplier sigma / sensitivity. PRV returns an upper bound within eps_error = 0.01 of the truth.
    sigma = analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=2.0)
    accountant = PRVAccountant()
    accountant.history = [(sigma / 2.0, 1.0, 1)]
    with warnings.catch_warnings():
        # At q = 1 opacus' PRV takes log(1 - q) = -inf, and its domain search warns about the RDP grid edge.
        warnings.simplefilter("ignore")
        prv_epsilon = accountant.get_epsilon(delta=delta)
    assert abs(prv_epsilon - epsilon) <= 0.02


def test_analytic_sigma_scales_with_sensitivity():
    unit = analytic_gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    assert analytic_gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=3.0) == pytest.approx(3.0 * unit, rel=1e-9)


@pytest.mark.parametrize("epsilon, delta", [(0.1, 1e-5), (0.5, 1e-6), (0.9, 1e-5)])
def test_classic_sigma_never_below_analytic(epsilon, delta):
    classic = classic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=1.0)
    assert classic == pytest.approx(math.sqrt(2 * math.log(1.25 / delta)) / epsilon)
    assert classic >= analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=1.0)


def test_classic_sigma_rejects_epsilon_above_one():
    with pytest.raises(InvalidPrivacyParameterError, match="only for epsilon < 1"):
        classic_gaussian_sigma(epsilon=2.0, delta=1e-5, sensitivity=1.0)


def test_empirical_noise_std_matches_sigma():
    ledger = PrivacyLedger(delta=1e-6)
    n, d = 10, 40_000
    values = torch.zeros(n, d)
    release = release_mean(values, clip_norm=1.0, epsilon=1.0, delta=1e-6, public_count=n, ledger=ledger, name="stat", generator=seeded())
    noise = release.values["all"] * n  # the mean of zeros is 0, so this is the noise on the sum
    expected = analytic_gaussian_sigma(epsilon=1.0, delta=1e-6, sensitivity=1.0)
    assert release.noise_std == expected
    # Standard error of a sample std over 40,000 draws is sigma / sqrt(2 * 40,000) = 0.35% of sigma.
    assert np.std(noise) == pytest.approx(expected, rel=0.02)
    assert abs(np.mean(noise)) < 5 * expected / math.sqrt(d)


def test_clip_rows_bounds_norms():
    values = torch.randn(200, 16) * torch.logspace(-2, 2, 200)[:, None]
    clipped = clip_rows(values, clip_norm=1.5)
    norms = clipped.norm(dim=1)
    assert torch.all(norms <= 1.5 + 1e-12)
    small = values.norm(dim=1) <= 1.5
    assert torch.allclose(clipped[small], values[small].double())


def test_clipping_bounds_sensitivity_of_mean():
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(50, 8, generator=generator) * 10.0
    clip_norm, public_count = 2.0, 50
    base = clipped_mean(values, clip_norm=clip_norm, public_count=public_count)

    largest_removal = largest_replacement = 0.0
    for row in range(values.shape[0]):
        removed = clipped_mean(torch.cat([values[:row], values[row + 1 :]]), clip_norm=clip_norm, public_count=public_count)
        largest_removal = max(largest_removal, float((removed - base).norm()))
        replaced = values.clone()
        replaced[row] = -1e6 * values[row]
        moved = clipped_mean(replaced, clip_norm=clip_norm, public_count=public_count)
        largest_replacement = max(largest_replacement, float((moved - base).norm()))

    # Add/remove adjacency: C / n. Replacing one record is a removal plus an addition: 2C / n.
    assert largest_removal <= clip_norm / public_count + 1e-12
    assert largest_replacement <= 2 * clip_norm / public_count + 1e-12
    # The rows have norms far above C, so the bounds are attained.
    assert largest_removal == pytest.approx(clip_norm / public_count)
    assert largest_replacement == pytest.approx(2 * clip_norm / public_count)


def test_group_release_changes_only_the_record_group():
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(60, 4, generator=generator) * 5.0
    groups = np.array(["female", "male", "unknown"] * 20)
    counts = {"female": 20, "male": 20, "unknown": 20}

    def release(rows, labels):
        ledger = PrivacyLedger(delta=1e-6)
        return release_mean(rows, clip_norm=1.0, epsilon=1.0, delta=1e-6, public_count=counts, ledger=ledger, name="means", groups=labels, generator=seeded(3))

    full = release(values, groups)
    without_first = release(values[1:], groups[1:])  # record 0 is in group "female"
    assert np.linalg.norm(full.values["female"] - without_first.values["female"]) <= 1.0 / 20 + 1e-12
    assert np.array_equal(full.values["male"], without_first.values["male"])
    assert np.array_equal(full.values["unknown"], without_first.values["unknown"])


def test_release_records_epsilon_in_ledger():
    ledger = PrivacyLedger(delta=1e-6, accountant="rdp", dataset_size=5000)
    values = np.random.default_rng(0).normal(size=(5000, 32))
    first = release_mean(values, clip_norm=1.0, epsilon=0.5, delta=1e-7, public_count=5000, ledger=ledger, name="alignment_target", generator=seeded())
    assert ledger.component_epsilon("alignment_target") == 0.5
    assert ledger.component_delta("alignment_target") == 1e-7

    release_mean(values, clip_norm=1.0, epsilon=0.25, delta=1e-7, public_count=5000, ledger=ledger, name="alignment_target", generator=seeded(1))
    report = ledger.report()
    assert report.total_epsilon == pytest.approx(0.75)
    assert report.components[0].mechanism == "gaussian"
    assert report.components[0].steps == 2

    data = json.loads(json.dumps(first.to_dict()))
    assert data["sensitivity"] == 1.0
    assert data["adjacency"] == "add/remove one record"
    assert data["mechanism"] == "analytic-gaussian"
    assert len(data["values"]["all"]) == 32


@pytest.mark.parametrize("bound", [None, 0.0, -1.0, float("inf"), float("nan"), "large"])
def test_release_without_finite_bound_raises(bound):
    ledger = PrivacyLedger(delta=1e-6)
    with pytest.raises(MissingSensitivityBoundError, match="augmentation"):
        release_mean(np.ones((5, 3)), clip_norm=bound, epsilon=1.0, delta=1e-6, public_count=5, ledger=ledger, name="stat")
    assert ledger.components() == []


def test_release_requires_clip_norm_argument():
    ledger = PrivacyLedger(delta=1e-6)
    with pytest.raises(TypeError):
        release_mean(np.ones((5, 3)), epsilon=1.0, delta=1e-6, public_count=5, ledger=ledger, name="stat")  # noqa: the missing bound is the test


def test_release_requires_ledger():
    with pytest.raises(InvalidPrivacyParameterError, match="PrivacyLedger"):
        release_mean(np.ones((5, 3)), clip_norm=1.0, epsilon=1.0, delta=1e-6, public_count=5, ledger=None, name="stat")


def test_release_rejects_delta_above_inverse_n():
    ledger = PrivacyLedger(delta=1e-6, dataset_size=100)
    with pytest.raises(InvalidPrivacyParameterError, match="1/N"):
        release_mean(np.ones((100, 3)), clip_norm=1.0, epsilon=1.0, delta=0.02, public_count=100, ledger=ledger, name="stat")


def test_release_needs_count_per_group():
    ledger = PrivacyLedger(delta=1e-6)
    with pytest.raises(InvalidPrivacyParameterError, match="public count"):
        release_mean(np.ones((4, 2)), clip_norm=1.0, epsilon=1.0, delta=1e-6, public_count={"a": 2}, ledger=ledger, name="stat", groups=["a", "a", "b", "b"])


def test_quantile_release_close_at_large_epsilon():
    ledger = PrivacyLedger(delta=1e-6)
    values = np.random.default_rng(4).normal(size=(20_000, 3))
    levels = [0.1, 0.5, 0.9]
    release = release_quantiles(
        values, lower=-5.0, upper=5.0, bins=200, quantiles=levels, epsilon=50.0, delta=1e-6, ledger=ledger, name="quantiles", generator=seeded()
    )
    assert release.sensitivity == pytest.approx(math.sqrt(3))
    released = release.values["all"]
    assert released.shape == (3, 3)
    true = np.quantile(values, levels, axis=0)
    # Bin width 0.05; the noise on counts of ~100 per bin is below 1.
    assert np.max(np.abs(released - true)) < 0.05
    assert ledger.component_epsilon("quantiles") == 50.0


def test_quantile_release_clips_to_range():
    ledger = PrivacyLedger(delta=1e-6)
    values = np.full((1000, 1), 100.0)
    release = release_quantiles(values, lower=0.0, upper=1.0, bins=10, quantiles=[0.5], epsilon=20.0, delta=1e-6, ledger=ledger, name="q", generator=seeded())
    assert 0.0 <= release.values["all"][0, 0] <= 1.0


def test_quantile_release_covers_public_group_keys():
    ledger = PrivacyLedger(delta=1e-6)
    values = np.random.default_rng(5).normal(size=(300, 2))
    groups = ["a"] * 150 + ["b"] * 150
    release = release_quantiles(values, lower=-4.0, upper=4.0, bins=8, quantiles=[0.5], epsilon=1.0, delta=1e-6, ledger=ledger,
                                name="q", groups=groups, group_keys=["a", "b", "empty"], generator=seeded())
    assert list(release.values) == ["a", "b", "empty"]
    assert release.values["empty"].shape == (1, 2)
    with pytest.raises(InvalidPrivacyParameterError, match="outside group_keys"):
        release_quantiles(values, lower=-4.0, upper=4.0, bins=8, quantiles=[0.5], epsilon=1.0, delta=1e-6, ledger=ledger,
                          name="q2", groups=groups, group_keys=["a"])


def test_quantile_release_rejects_missing_range():
    ledger = PrivacyLedger(delta=1e-6)
    with pytest.raises(MissingSensitivityBoundError):
        release_quantiles(np.ones((10, 2)), lower=0.0, upper=float("inf"), bins=10, quantiles=[0.5], epsilon=1.0, delta=1e-6, ledger=ledger, name="q")
