"""Tests of the privacy risk index bounds and the membership-inference AUC."""

import math

import numpy as np
import pytest
from scipy.stats import beta

from phenodiff.privacy.audit.risk import (
    clopper_pearson_upper,
    membership_inference_auc,
    minimum_generated_images,
    privacy_risk_index,
    zero_copy_bound,
)
from phenodiff.privacy.errors import AuditInputError


def test_clopper_pearson_matches_beta_quantile():
    assert clopper_pearson_upper(7, 200, confidence=0.95) == pytest.approx(beta.ppf(0.95, 8, 193))
    assert clopper_pearson_upper(200, 200) == 1.0
    many = clopper_pearson_upper(np.array([0, 3, 200]), 200)
    assert many.shape == (3,)
    assert many[2] == 1.0


def test_clopper_pearson_zero_successes_closed_form():
    for trials in (10, 1000, 100_000):
        assert clopper_pearson_upper(0, trials, confidence=0.95) == pytest.approx(1.0 - 0.05 ** (1.0 / trials), rel=1e-9)


def test_zero_copy_bound_formula():
    assert zero_copy_bound(1000, confidence=0.95) == pytest.approx(1.0 - 0.05 ** (1.0 / 1000))
    counts = np.zeros(5000, dtype=int)
    risk = privacy_risk_index(counts, n_generated=1000, confidence=0.95)
    assert risk.estimate == 0.0
    assert risk.upper == pytest.approx(zero_copy_bound(1000, confidence=0.95))
    assert risk.argmax_train_index is None


@pytest.mark.parametrize("delta_pi", [1e-2, 1e-3, 5e-4])
def test_minimum_generated_images_is_smallest(delta_pi):
    m = minimum_generated_images(delta_pi, confidence=0.95)
    assert zero_copy_bound(m, confidence=0.95) < delta_pi
    assert zero_copy_bound(m - 1, confidence=0.95) >= delta_pi
    assert m == math.floor(math.log(0.05) / math.log(1.0 - delta_pi)) + 1


def test_planted_copies_of_one_image_give_high_pi():
    rng = np.random.default_rng(0)
    n_train, n_generated, p_copy = 2000, 3000, 0.05
    counts = np.zeros(n_train, dtype=int)
    counts[42] = rng.binomial(n_generated, p_copy)
    # About 1% false flags spread over random training images.
    np.add.at(counts, rng.integers(0, n_train, size=30), 1)

    risk = privacy_risk_index(counts, n_generated=n_generated, confidence=0.95, delta_pi=1e-3)

    assert risk.argmax_train_index == 42
    assert risk.estimate == pytest.approx(counts[42] / n_generated)
    assert risk.estimate > 0.03
    assert risk.upper >= p_copy
    assert risk.upper < 0.07
    assert risk.certified is False
    assert risk.copies_total == counts.sum()


def test_pi_upper_bound_covers_truth():
    # Repeat the audit many times: the simultaneous bound must cover max_i p_i in >= 95% of them.
    rng = np.random.default_rng(1)
    n_train, n_generated = 500, 2000
    probabilities = np.full(n_train, 0.01 / n_train)
    probabilities[3] = 0.02
    probabilities[10] = 0.015
    truth = probabilities.max()
    covered = 0
    repeats = 400
    for _ in range(repeats):
        outcome = rng.multinomial(n_generated, np.append(probabilities, 1.0 - probabilities.sum()))
        covered += privacy_risk_index(outcome[:n_train], n_generated=n_generated, confidence=0.95).upper >= truth
    assert covered / repeats >= 0.95


def test_pi_rejects_inconsistent_counts():
    with pytest.raises(AuditInputError, match="sum to at most"):
        privacy_risk_index(np.array([5, 6]), n_generated=10)
    with pytest.raises(AuditInputError, match="confidence"):
        privacy_risk_index(np.array([0, 1]), n_generated=10, confidence=1.0)


def test_mia_auc_near_half_for_identical_scores():
    rng = np.random.default_rng(2)
    members, nonmembers = rng.normal(size=2000), rng.normal(size=2000)
    # The AUC's standard error here is about sqrt((1/2000 + 1/2000) / 12) = 0.009.
    assert membership_inference_auc(member_scores=members, nonmember_scores=nonmembers) == pytest.approx(0.5, abs=0.05)


def test_mia_auc_near_one_for_separated_scores():
    rng = np.random.default_rng(3)
    members = rng.normal(loc=0.0, scale=0.1, size=500)  # lower loss on training images
    nonmembers = rng.normal(loc=2.0, scale=0.1, size=500)
    assert membership_inference_auc(member_scores=members, nonmember_scores=nonmembers) == 1.0
    assert membership_inference_auc(member_scores=members, nonmember_scores=nonmembers, lower_is_member=False) == 0.0


def test_mia_auc_rejects_empty_side():
    with pytest.raises(AuditInputError, match="member and non-member"):
        membership_inference_auc(member_scores=np.array([]), nonmember_scores=np.array([1.0]))
