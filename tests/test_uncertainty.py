import math

import numpy as np
import pytest
import torch

from phenodiff.classifier import PhenoClassifier, SyntheticImageDataset
from phenodiff.uncertainty import (
    DEFAULT_NUM_BINS,
    MCDropoutPrediction,
    calibration_from_probabilities,
    choose_threshold,
    confidences_and_correctness,
    defer_mask,
    expected_calibration_error,
    fit_temperature,
    mc_dropout_predict,
    risk_coverage_curve,
    save_reliability_diagram,
    selective_accuracy,
)

GROUPS = ["female 18-40", "male 18-40"]


def small_dataset(count: int = 12) -> SyntheticImageDataset:
    generator = torch.Generator().manual_seed(0)
    return SyntheticImageDataset(
        pixel_values=torch.rand(count, 1, 32, 32, generator=generator),
        pathology=(torch.rand(count, 3, generator=generator) < 0.5).float(),
        groups=[GROUPS[i % 2] for i in range(count)],
        group_names=GROUPS,
    )


def small_model(dropout: float) -> PhenoClassifier:
    model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs={"channels": (8, 16, 32, 64)}, dropout=dropout, seed=0)
    return model.eval()


def test_ece_hand_example():
    # Bin (0.8, 0.9]: confidence 0.9, accuracy 1/2, gap 0.4. Bin (0.5, 0.6]: confidence 0.6, accuracy 1, gap 0.4.
    result = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], num_bins=10)
    assert result.ece == pytest.approx(0.4)
    assert result.bin_count.sum() == 4
    assert result.bin_count[8] == 2
    assert result.bin_count[5] == 2


def test_ece_uneven_bins_weighted_by_count():
    # 3 predictions at 0.75 (2 right): |2/3 - 0.75| * 3/4; 1 at 0.25 (wrong): |0 - 0.25| * 1/4.
    result = expected_calibration_error([0.75, 0.75, 0.75, 0.25], [1, 1, 0, 0], num_bins=4)
    assert result.ece == pytest.approx(abs(2 / 3 - 0.75) * 0.75 + 0.25 * 0.25)


def test_ece_zero_when_calibrated():
    confidences = [0.25] * 4 + [0.75] * 4
    correct = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(confidences, correct, num_bins=4).ece == pytest.approx(0.0)


def test_ece_default_bins_and_edges():
    result = expected_calibration_error([0.0, 1.0], [0, 1])
    assert result.num_bins == DEFAULT_NUM_BINS == 15
    assert result.bin_count[0] == 1
    assert result.bin_count[-1] == 1
    assert result.ece == pytest.approx(0.0)


def test_ece_rejects_bad_confidences():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error([0.5], [1], num_bins=0)


def test_confidences_multi_label_per_label():
    probabilities = np.array([[0.9, 0.3], [0.2, 0.6]])
    targets = np.array([[1, 1], [0, 1]])
    confidences, correct = confidences_and_correctness(probabilities, targets, multi_label=True)
    assert confidences.tolist() == pytest.approx([0.9, 0.7, 0.8, 0.6])
    assert correct.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_calibration_single_label():
    probabilities = np.array([[0.1, 0.9], [0.4, 0.6]])
    result = calibration_from_probabilities(probabilities, np.array([1, 0]), multi_label=False, num_bins=10)
    # Confidence 0.9 right (gap 0.1), confidence 0.6 wrong (gap 0.6), each weighted 1/2.
    assert result.ece == pytest.approx(0.35)


def test_reliability_diagram_png(tmp_path):
    result = expected_calibration_error([0.9, 0.8, 0.3], [1, 0, 0])
    path = save_reliability_diagram(result, tmp_path / "figures" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]


def test_temperature_recovers_scale():
    generator = torch.Generator().manual_seed(0)
    true_logits = 2.0 * torch.randn(4000, 4, generator=generator)
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(3.0 * true_logits, labels, multi_label=False) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits, labels, multi_label=False) == pytest.approx(1.0, rel=0.1)


def test_temperature_multi_label():
    generator = torch.Generator().manual_seed(1)
    true_logits = 2.0 * torch.randn(3000, 3, generator=generator)
    labels = torch.bernoulli(torch.sigmoid(true_logits), generator=generator)
    assert fit_temperature(0.5 * true_logits, labels, multi_label=True) == pytest.approx(0.5, rel=0.1)


def test_risk_coverage_hand_example():
    curve = risk_coverage_curve([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    assert curve.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert curve.risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert curve.aurc == pytest.approx((0.0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_risk_coverage_groups_ties():
    curve = risk_coverage_curve([0.2, 0.1, 0.2, 0.5], [1, 0, 0, 1])
    assert curve.thresholds.tolist() == [0.1, 0.2, 0.5]
    assert curve.coverage.tolist() == [0.25, 0.75, 1.0]
    assert curve.risk.tolist() == pytest.approx([0.0, 1 / 3, 0.5])
    assert curve.aurc == pytest.approx(0.25 * 0.0 + 0.5 * (1 / 3) + 0.25 * 0.5)


def test_threshold_for_target_coverage():
    scores = [0.4, 0.1, 0.3, 0.2]
    losses = [1, 0, 0, 1]
    choice = choose_threshold(scores, losses, target_coverage=0.5)
    assert choice.tau == 0.2
    assert choice.coverage == 0.5
    assert choice.risk == pytest.approx(0.5)
    assert defer_mask(scores, choice.tau).tolist() == [True, False, True, False]


def test_threshold_for_target_risk():
    scores = [0.1, 0.2, 0.3, 0.4]
    losses = [0, 1, 0, 1]
    choice = choose_threshold(scores, losses, target_risk=0.4)
    assert choice.tau == 0.3
    assert choice.coverage == 0.75
    assert choice.feasible
    impossible = choose_threshold([0.1, 0.2], [1, 1], target_risk=0.1)
    assert not impossible.feasible
    assert impossible.tau == -math.inf
    assert impossible.coverage == 0.0


def test_threshold_needs_one_target():
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold([0.1], [0], target_coverage=0.5, target_risk=0.1)
    with pytest.raises(ValueError, match="target_coverage"):
        choose_threshold([0.1], [0], target_coverage=1.5)


def test_selective_accuracy_report():
    report = selective_accuracy([0.1, 0.5, 0.2, 0.9], [1.0, 0.0, 1.0, 0.0], tau=0.3)
    assert report["coverage"] == 0.5
    assert report["kept"] == 2
    assert report["deferred"] == 2
    assert report["accuracy_kept"] == 1.0
    assert report["accuracy_overall"] == 0.5


def test_uncertainty_score_by_task():
    variance = torch.tensor([[0.01, 0.04, 0.09], [0.16, 0.0, 0.25]])
    mean = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]])
    common = {"num_passes": 4, "targets": torch.zeros(2, 3), "groups": torch.zeros(2), "group_names": ["g"]}
    single = MCDropoutPrediction(mean=mean, variance=variance, multi_label=False, **common)
    multi = MCDropoutPrediction(mean=mean, variance=variance, multi_label=True, **common)
    # Single-label: sigma of the argmax class (class 1, then class 0). Multi-label: largest sigma over labels.
    assert single.uncertainty().tolist() == pytest.approx([0.2, 0.4])
    assert multi.uncertainty().tolist() == pytest.approx([0.3, 0.5])


def test_mc_predict_zero_variance_without_dropout():
    prediction = mc_dropout_predict(small_model(0.0), small_dataset(), num_passes=5, batch_size=5)
    assert prediction.mean.shape == (12, 3)
    assert float(prediction.variance.max()) == 0.0
    assert float(prediction.uncertainty().max()) == 0.0


def test_mc_predict_positive_variance_with_dropout():
    data = small_dataset()
    model = small_model(0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(data.pixel_values)
    model.eval()
    first = mc_dropout_predict(model, data, num_passes=10, batch_size=5, seed=1)
    again = mc_dropout_predict(model, data, num_passes=10, batch_size=5, seed=1)
    other = mc_dropout_predict(model, data, num_passes=10, batch_size=5, seed=2)
    assert float(first.variance.min()) > 0.0
    assert torch.equal(first.mean, again.mean)
    assert not torch.equal(first.mean, other.mean)
    assert torch.equal(first.targets, data.pathology)
    assert first.correctness().shape == (12,)


def test_mc_predict_keeps_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    mc_dropout_predict(small_model(0.3), small_dataset(4), num_passes=2)
    assert torch.equal(torch.rand(2), expected)


def test_mc_predict_temperature_softens():
    data = small_dataset(6)
    model = small_model(0.0)
    model.train()
    with torch.no_grad():
        model(data.pixel_values)
    model.eval()
    plain = mc_dropout_predict(model, data, num_passes=2)
    softened = mc_dropout_predict(model, data, num_passes=2, temperature=4.0)
    assert float((softened.mean - 0.5).abs().max()) < float((plain.mean - 0.5).abs().max())
    with pytest.raises(ValueError, match="temperature"):
        mc_dropout_predict(model, data, temperature=0.0)
