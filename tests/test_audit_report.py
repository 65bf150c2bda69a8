"""Tests of the audit report, the release filter and the continuous-audit controller."""

import json
import logging

import numpy as np
import pytest

from phenodiff.privacy.audit import (
    AuditController,
    PixelEmbedding,
    audit_memorisation,
    calibrate_copy_threshold,
    minimum_generated_images,
    release_filter,
    released,
)
from phenodiff.privacy.errors import AuditInputError
from procedural_images import lightly_edited, random_images

N_TRAIN = 400


@pytest.fixture(scope="module")
def audit_inputs():
    embed = PixelEmbedding()
    train_images = random_images(N_TRAIN, seed=11)
    train_groups = np.array(["female"] * 190 + ["male"] * 200 + ["rare"] * 10)
    # 40 exact and edited copies of training image 5 (group "female"), then 360 fresh images.
    planted = np.concatenate([np.repeat(train_images[5:6], 20, axis=0), lightly_edited(np.repeat(train_images[5:6], 20, axis=0), seed=2)])
    synthetic_images = np.concatenate([planted, random_images(360, seed=12)])
    synthetic_groups = np.array(["female"] * 40 + ["female", "male"] * 180)
    rng = np.random.default_rng(0)
    return {
        "train": embed(train_images),
        "heldout": embed(random_images(300, seed=13)),
        "synthetic": embed(synthetic_images),
        "train_groups": train_groups,
        "synthetic_groups": synthetic_groups,
        "member_scores": np.concatenate([rng.normal(0.0, 0.1, 200), rng.normal(1.0, 1.0, 200)]),
        "member_groups": np.array(["female"] * 200 + ["male"] * 200),
        "nonmember_scores": np.concatenate([rng.normal(2.0, 0.1, 150), rng.normal(1.0, 1.0, 150)]),
        "nonmember_groups": np.array(["female"] * 150 + ["male"] * 150),
        "embedding": embed.describe(),
    }


@pytest.fixture(scope="module")
def threshold(audit_inputs):
    return calibrate_copy_threshold(
        train_embeddings=audit_inputs["train"], heldout_embeddings=audit_inputs["heldout"], false_flag_rate=0.01, embedding=audit_inputs["embedding"]
    )


@pytest.fixture(scope="module")
def report(audit_inputs, threshold):
    return audit_memorisation(
        train_embeddings=audit_inputs["train"],
        synthetic_embeddings=audit_inputs["synthetic"],
        threshold=threshold,
        delta_pi=0.005,
        member_scores=audit_inputs["member_scores"],
        nonmember_scores=audit_inputs["nonmember_scores"],
        train_groups=audit_inputs["train_groups"],
        synthetic_groups=audit_inputs["synthetic_groups"],
        member_groups=audit_inputs["member_groups"],
        nonmember_groups=audit_inputs["nonmember_groups"],
        step=1200,
    )


def test_report_overall_numbers(report):
    assert report.n_synthetic == 400
    assert report.copies >= 40
    assert report.copy_rate == report.copies / 400
    assert report.privacy_risk.argmax_train_index == 5
    assert report.privacy_risk.max_copies >= 40
    assert report.privacy_risk.estimate >= 0.1
    assert report.privacy_risk.certified is False
    assert 0.5 < report.mia_auc < 1.0
    assert report.step == 1200


def test_report_per_group(report):
    female, male, rare = report.groups["female"], report.groups["male"], report.groups["rare"]
    assert female.privacy_risk.argmax_train_index == 5
    assert female.privacy_risk.estimate >= 0.1
    assert male.privacy_risk.estimate < 0.02
    assert female.copy_rate > male.copy_rate
    assert female.n_synthetic == 220
    assert male.n_synthetic == 180
    assert female.mia_auc == 1.0
    assert male.mia_auc == pytest.approx(0.5, abs=0.1)
    assert not female.small_group
    assert rare.small_group
    assert "training images (10)" in rare.small_sets
    assert any("'rare'" in message for message in report.warnings)


def test_report_warns_when_sample_cannot_certify(report):
    needed = minimum_generated_images(0.005, confidence=0.95)
    assert needed > 400
    assert report.privacy_risk.minimum_generated == needed
    assert any(f"generate at least {needed}" in message for message in report.warnings)


def test_report_json_round_trip(report, tmp_path):
    path = report.write_json(tmp_path / "audit" / "report.json")
    loaded = json.loads(path.read_text())
    assert loaded["threshold"]["method"] == "heldout_quantile"
    assert loaded["threshold"]["embedding"]["kind"] == "pixels"
    assert loaded["privacy_risk"]["argmax_train_index"] == 5
    assert loaded["groups"]["rare"]["small_group"] is True
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert list(tmp_path.joinpath("audit").iterdir()) == [path]


def test_report_needs_train_groups_for_group_numbers(audit_inputs, threshold):
    with pytest.raises(AuditInputError, match="train_groups"):
        audit_memorisation(
            train_embeddings=audit_inputs["train"],
            synthetic_embeddings=audit_inputs["synthetic"],
            threshold=threshold,
            synthetic_groups=audit_inputs["synthetic_groups"],
        )
    with pytest.raises(AuditInputError, match="both member_scores and nonmember_scores"):
        audit_memorisation(
            train_embeddings=audit_inputs["train"],
            synthetic_embeddings=audit_inputs["synthetic"],
            threshold=threshold,
            member_scores=audit_inputs["member_scores"],
        )


def test_release_filter_rejects_copies(audit_inputs, threshold):
    decision = release_filter(
        audit_inputs["synthetic"], train_embeddings=audit_inputs["train"], threshold=threshold, synthetic_groups=audit_inputs["synthetic_groups"]
    )
    assert not decision.keep[:40].any()
    assert decision.n_rejected >= 40
    assert decision.n_kept + decision.n_rejected == decision.n_total == 400
    assert decision.rejected_by_group["female"] >= 40
    assert sum(decision.rejected_by_group.values()) == decision.n_rejected
    assert "keep" not in decision.to_dict()

    items = [f"synthetic_{index:04d}.png" for index in range(400)]
    kept = released(items, decision)
    assert len(kept) == decision.n_kept
    assert not any(name in kept for name in items[:40])
    with pytest.raises(AuditInputError, match="were screened"):
        released(items[:-1], decision)


def test_release_filter_keeps_fresh_images(audit_inputs, threshold):
    fresh = audit_inputs["synthetic"][40:]
    decision = release_filter(fresh, train_embeddings=audit_inputs["train"], threshold=threshold)
    # Calibrated at a 1% false-flag rate; 360 fresh images.
    assert decision.n_rejected <= 12


def test_controller_continues_below_threshold(caplog):
    controller = AuditController(delta_pi=1e-3, policy="raise_noise")
    with caplog.at_level(logging.INFO, logger="phenodiff.privacy.audit.controller"):
        action = controller.decide(pi_estimate=0.0, pi_upper=4e-4, noise_multiplier=1.0, step=100)
    assert action.kind == "continue"
    assert action.noise_multiplier == 1.0
    assert "below delta_PI" in caplog.text


def test_controller_raises_noise_on_breach(caplog):
    controller = AuditController(delta_pi=1e-3, policy="raise_noise", noise_factor=1.5, max_noise_multiplier=3.0)
    with caplog.at_level(logging.WARNING, logger="phenodiff.privacy.audit.controller"):
        first = controller.decide(pi_estimate=0.01, pi_upper=0.02, noise_multiplier=1.0, step=500)
    assert first.kind == "raise_noise"
    assert first.noise_multiplier == pytest.approx(1.5)
    assert "raising the noise multiplier from 1 to 1.5" in caplog.text

    capped = controller.decide(pi_estimate=0.01, pi_upper=0.02, noise_multiplier=2.5, step=600)
    assert capped.kind == "raise_noise"
    assert capped.noise_multiplier == 3.0

    at_maximum = controller.decide(pi_estimate=0.01, pi_upper=0.02, noise_multiplier=3.0, step=700)
    assert at_maximum.kind == "halt"
    assert "already at the maximum" in at_maximum.reason
    assert controller.halted
    assert [action.kind for action in controller.history] == ["raise_noise", "raise_noise", "halt"]


def test_controller_halt_policy_is_sticky():
    controller = AuditController(delta_pi=1e-3, policy="halt")
    assert controller.decide(pi_estimate=0.01, pi_upper=0.02, noise_multiplier=1.0).kind == "halt"
    later = controller.decide(pi_estimate=0.0, pi_upper=1e-4, noise_multiplier=1.0)
    assert later.kind == "halt"
    assert "Halted earlier" in later.reason


def test_controller_basis_estimate_and_small_audit():
    bound_based = AuditController(delta_pi=1e-3, policy="halt")
    small = bound_based.decide(pi_estimate=0.0, pi_upper=0.009, noise_multiplier=1.0, n_generated=400)
    assert small.kind == "halt"
    assert f"generate at least {minimum_generated_images(1e-3)}" in small.reason

    estimate_based = AuditController(delta_pi=1e-3, policy="halt", basis="estimate")
    assert estimate_based.decide(pi_estimate=0.0, pi_upper=0.009, noise_multiplier=1.0, n_generated=400).kind == "continue"


def test_controller_from_report(report):
    controller = AuditController(delta_pi=0.005, policy="raise_noise")
    action = controller.decide_from_report(report, noise_multiplier=1.2)
    assert action.kind == "raise_noise"
    assert action.step == 1200
    assert action.pi_upper == report.privacy_risk.upper


def test_controller_rejects_invalid_settings():
    with pytest.raises(AuditInputError, match="policy"):
        AuditController(delta_pi=1e-3, policy="ignore")
    with pytest.raises(AuditInputError, match="noise_factor"):
        AuditController(delta_pi=1e-3, policy="raise_noise", noise_factor=1.0)
    with pytest.raises(AuditInputError, match="pi_estimate <= pi_upper"):
        AuditController(delta_pi=1e-3, policy="halt").decide(pi_estimate=0.2, pi_upper=0.1, noise_multiplier=1.0)
