"""Tests of phenodiff.privacy.accounting against opacus' own accountants."""

import json

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from phenodiff.privacy.accounting import (
    PrivacyLedger,
    compute_epsilon,
    noise_multiplier_for_target,
    sample_rate_for,
)
from phenodiff.privacy.errors import (
    InvalidPrivacyParameterError,
    LedgerStateError,
    UnreachablePrivacyTargetError,
)

# The setting of opacus' own accountant tests: q = 0.04, sigma = 1.5, 90 epochs, delta = 1e-5.
SAMPLE_RATE = 0.04
SIGMA = 1.5
STEPS = int(90 / 0.04)
DELTA = 1e-5


def test_rdp_epsilon_matches_opacus_golden():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("unet")
    ledger.record_steps("unet", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=STEPS)

    opacus_accountant = RDPAccountant()
    for _ in range(STEPS):
        opacus_accountant.step(noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE)

    assert ledger.component_epsilon("unet") == opacus_accountant.get_epsilon(delta=DELTA)
    # The golden value of opacus' test_rdp_accountant.
    assert ledger.component_epsilon("unet") == pytest.approx(7.32911117143, abs=1e-9)
    assert ledger.accountant("unet").history == opacus_accountant.history


def test_prv_epsilon_matches_opacus():
    ledger = PrivacyLedger(delta=DELTA, accountant="prv")
    ledger.add_dp_sgd_component("unet")
    ledger.record_steps("unet", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=STEPS)

    opacus_accountant = PRVAccountant()
    opacus_accountant.history = [(SIGMA, SAMPLE_RATE, STEPS)]

    assert ledger.component_epsilon("unet") == opacus_accountant.get_epsilon(delta=DELTA)
    assert compute_epsilon(noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=STEPS, delta=DELTA) == ledger.component_epsilon("unet")


def test_noise_multiplier_matches_opacus_search():
    sigma = noise_multiplier_for_target(target_epsilon=8.0, target_delta=DELTA, sample_rate=SAMPLE_RATE, steps=2000, accountant="rdp")
    expected = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=SAMPLE_RATE, steps=2000, accountant="rdp")

    assert sigma == expected
    assert sigma == pytest.approx(1.3562, abs=1e-4)
    spent = compute_epsilon(noise_multiplier=sigma, sample_rate=SAMPLE_RATE, steps=2000, delta=DELTA, accountant="rdp")
    assert spent <= 8.0
    assert spent > 8.0 - 0.01 - 1e-9


def test_unreachable_target_raises_typed_error():
    with pytest.raises(UnreachablePrivacyTargetError) as raised:
        noise_multiplier_for_target(
            target_epsilon=0.05, target_delta=1e-6, sample_rate=0.5, steps=20_000, accountant="rdp", dataset_size=1000
        )
    error = raised.value
    assert error.target_epsilon == 0.05
    assert error.steps == 20_000
    message = str(error)
    assert "0.05" in message
    assert "20000 steps" in message
    assert "expected batch size 500 of 1000 records" in message
    assert "more data" in message
    assert "fewer steps" in message
    assert "smaller batch" in message
    assert "larger target epsilon" in message


def test_max_noise_multiplier_bounds_search():
    # Reachable with sigma around 3, not with sigma capped at 2.
    reachable = noise_multiplier_for_target(target_epsilon=1.0, target_delta=DELTA, sample_rate=0.01, steps=5000, accountant="rdp")
    assert 2.0 < reachable < 20.0
    with pytest.raises(UnreachablePrivacyTargetError):
        noise_multiplier_for_target(
            target_epsilon=1.0, target_delta=DELTA, sample_rate=0.01, steps=5000, accountant="rdp", max_noise_multiplier=2.0
        )


def test_delta_at_or_above_inverse_n_raises():
    with pytest.raises(InvalidPrivacyParameterError, match="not below 1/N"):
        noise_multiplier_for_target(target_epsilon=8.0, target_delta=1e-3, sample_rate=0.01, steps=100, dataset_size=1000)
    with pytest.raises(InvalidPrivacyParameterError, match="not below 1/N"):
        PrivacyLedger(delta=1e-3, dataset_size=1000)


@pytest.mark.parametrize(
    "arguments",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": float("inf")},
        {"target_delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
    ],
)
def test_invalid_parameters_raise(arguments):
    base = {"target_epsilon": 1.0, "target_delta": DELTA, "sample_rate": 0.01, "steps": 100}
    with pytest.raises(InvalidPrivacyParameterError):
        noise_multiplier_for_target(**{**base, **arguments})


def test_sample_rate_for_batch_and_dataset():
    assert sample_rate_for(expected_batch_size=64, dataset_size=6400) == 0.01
    with pytest.raises(InvalidPrivacyParameterError):
        sample_rate_for(expected_batch_size=0, dataset_size=100)


def test_state_dict_round_trip_continues_epsilon():
    uninterrupted = PrivacyLedger(delta=DELTA, accountant="rdp", dataset_size=50_000)
    uninterrupted.add_dp_sgd_component("unet+phenotype_encoder", note="private train split")
    uninterrupted.record_gaussian_release("alignment_target", epsilon=0.3, delta=1e-6, noise_std=4.0, sensitivity=1.0)
    uninterrupted.record_steps("unet+phenotype_encoder", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=1000)
    before = uninterrupted.total_epsilon()

    # Through JSON text, as a checkpoint would store it.
    state = json.loads(json.dumps(uninterrupted.state_dict()))
    resumed = PrivacyLedger.from_state_dict(state)

    assert resumed.state_dict() == uninterrupted.state_dict()
    assert resumed.total_epsilon() == before
    assert resumed.component_epsilon("alignment_target") == 0.3

    for ledger in (uninterrupted, resumed):
        ledger.record_steps("unet+phenotype_encoder", noise_multiplier=2.0, sample_rate=SAMPLE_RATE, steps=500)
    assert resumed.total_epsilon() == uninterrupted.total_epsilon()
    assert resumed.total_epsilon() > before


def test_load_state_dict_rejects_mismatch():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("unet")
    ledger.record_steps("unet", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=10)
    state = ledger.state_dict()

    with pytest.raises(LedgerStateError, match="delta"):
        PrivacyLedger(delta=1e-6, accountant="rdp").load_state_dict(state)
    with pytest.raises(LedgerStateError, match="accountant"):
        PrivacyLedger(delta=DELTA, accountant="prv").load_state_dict(state)
    with pytest.raises(LedgerStateError, match="format"):
        PrivacyLedger(delta=DELTA, accountant="rdp").load_state_dict({"history": []})
    broken = json.loads(json.dumps(state))
    broken["components"][0]["history"] = [[SIGMA, 2.0, 10]]
    with pytest.raises(LedgerStateError, match="Malformed"):
        PrivacyLedger(delta=DELTA, accountant="rdp").load_state_dict(broken)


def test_would_exceed_stops_before_target():
    target = 3.0
    sigma, rate = 1.0, 0.02
    # Find the last step count within the target with opacus directly.
    low, high = 1, 20_000
    while high - low > 1:
        middle = (low + high) // 2
        if compute_epsilon(noise_multiplier=sigma, sample_rate=rate, steps=middle, delta=DELTA, accountant="rdp") <= target:
            low = middle
        else:
            high = middle
    last_allowed = low

    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("unet")
    ledger.record_steps("unet", noise_multiplier=sigma, sample_rate=rate, steps=last_allowed - 5)
    taken = last_allowed - 5
    # The training loop: check before each step, stop when the next step would exceed.
    while not ledger.would_exceed(target_epsilon=target, extra_steps=1):
        ledger.record_steps("unet", noise_multiplier=sigma, sample_rate=rate)
        taken += 1
        assert taken <= last_allowed + 1, "the loop did not stop"

    assert taken == last_allowed
    assert ledger.total_epsilon() <= target
    one_more = compute_epsilon(noise_multiplier=sigma, sample_rate=rate, steps=taken + 1, delta=DELTA, accountant="rdp")
    assert one_more > target


def test_would_exceed_counts_other_components():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("unet")
    ledger.record_steps("unet", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=100)
    alone = ledger.component_epsilon("unet")
    assert not ledger.would_exceed(target_epsilon=alone + 0.5, extra_steps=0)

    ledger.record_gaussian_release("alignment_target", epsilon=1.0, delta=1e-6, noise_std=2.0, sensitivity=1.0)
    assert ledger.would_exceed(target_epsilon=alone + 0.5, extra_steps=0)


def test_would_exceed_needs_schedule_without_steps():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("unet")
    with pytest.raises(InvalidPrivacyParameterError, match="pass noise_multiplier and sample_rate"):
        ledger.would_exceed(target_epsilon=1.0, extra_steps=10)
    assert not ledger.would_exceed(target_epsilon=10.0, extra_steps=10, noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE)


def test_basic_composition_adds_components():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("autoencoder")
    ledger.add_dp_sgd_component("unet+phenotype_encoder")
    ledger.record_steps("autoencoder", noise_multiplier=2.0, sample_rate=0.01, steps=300)
    ledger.record_steps("unet+phenotype_encoder", noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=200)
    ledger.record_gaussian_release("alignment_target", epsilon=0.2, delta=1e-7, noise_std=9.0, sensitivity=1.0)
    ledger.record_gaussian_release("alignment_target", epsilon=0.3, delta=1e-7, noise_std=7.0, sensitivity=1.0)

    report = ledger.report()
    by_name = {component.name: component for component in report.components}
    expected_unet = compute_epsilon(noise_multiplier=SIGMA, sample_rate=SAMPLE_RATE, steps=200, delta=DELTA, accountant="rdp")
    assert by_name["unet+phenotype_encoder"].epsilon == expected_unet
    assert by_name["alignment_target"].epsilon == pytest.approx(0.5)
    assert by_name["alignment_target"].steps == 2
    assert report.total_epsilon == pytest.approx(sum(c.epsilon for c in report.components))
    assert report.total_delta == pytest.approx(2 * DELTA + 2e-7)
    assert json.loads(json.dumps(report.to_dict()))["total_epsilon"] == report.total_epsilon


def test_committed_delta_must_stay_below_inverse_n():
    ledger = PrivacyLedger(delta=4e-4, accountant="rdp", dataset_size=1000)
    ledger.add_dp_sgd_component("autoencoder")
    ledger.add_dp_sgd_component("unet")
    with pytest.raises(InvalidPrivacyParameterError, match="total delta"):
        ledger.record_gaussian_release("alignment_target", epsilon=0.5, delta=2e-4, noise_std=5.0, sensitivity=1.0)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_ledger_accountant_records_opacus_training():
    ledger = PrivacyLedger(delta=DELTA, accountant="rdp")
    ledger.add_dp_sgd_component("classifier")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant = ledger.accountant("classifier")
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0
    )
    for features, labels in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()

    history = ledger.accountant("classifier").history
    assert len(history) == 1
    assert history[0][0] == 1.1
    assert history[0][1] == pytest.approx(16 / 64)
    assert history[0][2] == len(loader)
    assert ledger.component_epsilon("classifier") == engine.get_epsilon(DELTA)
