import pytest
import torch

from phenodiff.fairness import (
    bias_gap,
    diagnostic_loss,
    group_means,
    hard_accuracy,
    mean_absolute_deviation,
    soft_accuracy,
    soft_bias,
)


def test_bias_gap_hand_example():
    # Group accuracies a = 1/2, b = 1, c = 3/4; their mean is 3/4, so the gap is (1/4 + 1/4 + 0) / 3 = 1/6.
    predictions = [1, 0, 1, 1, 1, 1, 1, 0]
    references = [1, 1, 1, 1, 1, 1, 1, 1]
    groups = ["a", "a", "b", "b", "c", "c", "c", "c"]
    report = bias_gap(predictions, references, groups)
    assert report.group_accuracy == {"a": 0.5, "b": 1.0, "c": 0.75}
    assert report.group_size == {"a": 2, "b": 2, "c": 4}
    assert report.gap == pytest.approx(1 / 6)
    assert report.to_dict()["gap_percent"] == pytest.approx(100 / 6)
    assert report.worst_group == "a"
    assert report.worst_accuracy == 0.5


def test_bias_gap_single_group_is_zero():
    report = bias_gap([0, 1, 1], [1, 1, 0], ["g", "g", "g"])
    assert report.gap == 0.0


def test_bias_gap_multi_label_uses_label_accuracy():
    predictions = [[1, 0], [0, 0], [1, 1]]
    references = [[1, 1], [0, 0], [1, 1]]
    report = bias_gap(predictions, references, ["a", "b", "b"])
    assert report.group_accuracy == {"a": 0.5, "b": 1.0}
    assert report.gap == pytest.approx(0.25)


def test_bias_gap_flags_small_groups():
    predictions = [1] * 6 + [0]
    references = [1] * 7
    groups = ["big"] * 6 + ["tiny"]
    report = bias_gap(predictions, references, groups, min_group_size=3)
    assert report.small_groups == ["tiny"]
    assert report.gap == pytest.approx(0.5)
    excluded = bias_gap(predictions, references, groups, min_group_size=3, exclude_small_groups=True)
    assert excluded.excluded_groups == ["tiny"]
    assert excluded.gap == 0.0
    assert excluded.worst_group == "big"


def test_bias_gap_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        bias_gap([1, 0], [1], ["a", "b"])
    with pytest.raises(ValueError, match="none is left"):
        bias_gap([1], [1], ["a"], min_group_size=5, exclude_small_groups=True)


def test_soft_accuracy_single_label():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    targets = torch.tensor([0, 1])
    assert soft_accuracy(probabilities, targets, multi_label=False).tolist() == pytest.approx([0.7, 0.1])


def test_soft_accuracy_multi_label():
    probabilities = torch.tensor([[0.9, 0.2], [0.4, 0.6]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Mean over labels of the probability of the true value: (0.9 + 0.8) / 2 and (0.4 + 0.6) / 2.
    assert soft_accuracy(probabilities, targets, multi_label=True).tolist() == pytest.approx([0.85, 0.5])


def test_hard_accuracy_both_tasks():
    probabilities = torch.tensor([[0.9, 0.2], [0.4, 0.6]])
    assert hard_accuracy(probabilities, torch.tensor([0, 0]), multi_label=False).tolist() == [1.0, 0.0]
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert hard_accuracy(probabilities, targets, multi_label=True).tolist() == [0.5, 1.0]


def test_group_means_present_groups_only():
    values = torch.tensor([1.0, 3.0, 5.0, 7.0])
    groups = torch.tensor([4, 4, 1, 4])
    ids, means, counts = group_means(values, groups)
    assert ids.tolist() == [1, 4]
    assert means.tolist() == pytest.approx([5.0, 11.0 / 3.0])
    assert counts.tolist() == [1, 3]


def test_soft_bias_hand_example():
    # Soft accuracies: group 0 -> mean(0.8, 0.6) = 0.7, group 2 -> 0.3; mean 0.5, so Bias_soft = 0.2.
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    targets = torch.tensor([0, 1, 1])
    groups = torch.tensor([0, 0, 2])
    assert float(soft_bias(probabilities, targets, groups, multi_label=False)) == pytest.approx(0.2)


def test_mean_absolute_deviation_formula():
    assert float(mean_absolute_deviation(torch.tensor([0.5, 1.0, 0.75]))) == pytest.approx(1 / 6)


def test_diagnostic_loss_adds_weighted_penalty():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-0.2, 1.0]], requires_grad=True)
    probabilities = logits.softmax(dim=1)
    targets = torch.tensor([0, 1, 1])
    groups = torch.tensor([0, 0, 1])
    task = torch.nn.functional.cross_entropy(logits, targets)
    loss, penalty = diagnostic_loss(task, probabilities, targets, groups, multi_label=False, lambda_bias=2.0)
    assert loss.item() == pytest.approx(task.item() + 2.0 * penalty.item())
    assert penalty.item() > 0
    penalty.backward()
    assert float(logits.grad.abs().sum()) > 0


def test_diagnostic_loss_rejects_negative_lambda():
    probabilities = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="lambda_bias"):
        diagnostic_loss(torch.tensor(0.0), probabilities, torch.tensor([0]), torch.tensor([0]), multi_label=False, lambda_bias=-0.1)


def test_soft_accuracy_checks_target_shape():
    with pytest.raises(ValueError, match="multi-label targets"):
        soft_accuracy(torch.zeros(2, 3), torch.zeros(2), multi_label=True)
