import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score

from phenodiff.fairness import bias_gap
from phenodiff.metrics import METRIC_NAMES, classification_scores, load_metric, metric_path, privacy_risk_index


@pytest.fixture(scope="module")
def metrics():
    # conftest.py sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE, so any hub access here would fail.
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"
    return {name: load_metric(name, keep_in_memory=True) for name in METRIC_NAMES}


def single_label_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(60, 4))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=60)
    labels[:4] = [0, 1, 2, 3]
    return probabilities, labels


def multi_label_case(seed: int = 1):
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(size=(50, 3))
    labels = (rng.uniform(size=(50, 3)) < 0.4).astype(int)
    labels[0] = [1, 1, 1]
    labels[1] = [0, 0, 0]
    return probabilities, labels


def test_metrics_load_offline_by_path(metrics):
    assert set(metrics) == {"bias_gap", "classification", "ece", "privacy_risk"}
    for name in METRIC_NAMES:
        assert (metric_path(name) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="valid names"):
        metric_path("accuracy")


@pytest.mark.slow
def test_metrics_load_in_offline_process(tmp_path):
    script = (
        "import json\n"
        "from phenodiff.metrics import METRIC_NAMES, load_metric\n"
        "ece = load_metric('ece').compute(predictions=[[0.1, 0.9], [0.4, 0.6]], references=[1, 0], num_bins=10)\n"
        "print(json.dumps({'loaded': [load_metric(n).name for n in METRIC_NAMES], 'ece': ece['ece']}))\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    completed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(output["loaded"]) == 4
    assert output["ece"] == pytest.approx(0.35)


def test_classification_single_label_matches_sklearn(metrics):
    probabilities, labels = single_label_case()
    result = metrics["classification"].compute(predictions=probabilities.tolist(), references=labels.tolist())
    predicted = probabilities.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert result["macro_auroc"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    assert result["auroc_undefined"] == []


def test_classification_multi_label_matches_sklearn(metrics):
    probabilities, labels = multi_label_case()
    result = metrics["classification"].compute(predictions=probabilities.tolist(), references=labels.tolist())
    predicted = (probabilities >= 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["label_accuracy"] == pytest.approx(1 - hamming_loss(labels, predicted))
    assert result["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0))
    assert result["macro_auroc"] == pytest.approx(roc_auc_score(labels, probabilities, average="macro"))


def test_single_class_subgroup_auroc_flagged(metrics):
    probabilities, labels = single_label_case()
    groups = ["mixed"] * 60
    labels = labels.copy()
    labels[50:] = 2
    groups[50:] = ["one class"] * 10
    result = metrics["classification"].compute(
        predictions=probabilities.tolist(), references=labels.tolist(), groups=groups
    )
    one_class = result["per_group"]["one class"]
    assert one_class["macro_auroc"] is None
    assert one_class["auroc_undefined"] == ["0", "1", "2", "3"]
    assert one_class["accuracy"] == pytest.approx(accuracy_score(labels[50:], probabilities[50:].argmax(axis=1)))
    mixed = result["per_group"]["mixed"]
    assert mixed["macro_auroc"] == pytest.approx(
        roc_auc_score(labels[:50], probabilities[:50], multi_class="ovr", average="macro")
    )


def test_multi_label_constant_label_flagged():
    probabilities, labels = multi_label_case()
    labels[:, 2] = 0
    result = classification_scores(probabilities, labels, class_names=["a", "b", "c"])
    assert result["auroc_per_class"]["c"] is None
    assert result["auroc_undefined"] == ["c"]
    expected = np.mean([roc_auc_score(labels[:, i], probabilities[:, i]) for i in range(2)])
    assert result["macro_auroc"] == pytest.approx(expected)


def test_classification_rejects_bad_references():
    with pytest.raises(ValueError, match="class indices"):
        classification_scores(np.full((2, 2), 0.5), np.array([0, 5]))
    with pytest.raises(ValueError, match="multi-label references"):
        classification_scores(np.full((2, 2), 0.5), np.zeros((2, 3)), multi_label=True)


def test_bias_gap_module_matches_function(metrics):
    rng = np.random.default_rng(2)
    predictions = rng.integers(0, 2, size=40)
    references = rng.integers(0, 2, size=40)
    groups = [["a", "b", "c", "d"][i % 4] for i in range(40)]
    groups[-1] = "tiny"
    result = metrics["bias_gap"].compute(
        predictions=predictions.tolist(), references=references.tolist(), groups=groups, min_group_size=5
    )
    expected = bias_gap(predictions, references, groups, min_group_size=5)
    assert result["gap"] == pytest.approx(expected.gap)
    assert result["group_accuracy"] == pytest.approx(expected.group_accuracy)
    assert result["small_groups"] == ["tiny"]
    assert result["worst_group"] == expected.worst_group


def test_bias_gap_module_hand_example(metrics):
    result = metrics["bias_gap"].compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 1], groups=["a", "a", "b", "b"])
    assert result["gap"] == pytest.approx(0.25)
    assert result["gap_percent"] == pytest.approx(25.0)


def test_ece_module_hand_example(metrics):
    result = metrics["ece"].compute(predictions=[[0.1, 0.9], [0.4, 0.6]], references=[1, 0], num_bins=10)
    assert result["ece"] == pytest.approx(0.35)
    assert result["num_bins"] == 10
    multi = metrics["ece"].compute(predictions=[[0.9, 0.3], [0.2, 0.6]], references=[[1, 1], [0, 1]])
    assert multi["num_predictions"] == 4
    assert multi["num_bins"] == 15


@pytest.mark.parametrize("count", [0, 3, 17])
def test_privacy_risk_matches_exact_binomial(metrics, count):
    result = metrics["privacy_risk"].compute(copy_counts=[0, count, 0], num_generated=500, confidence=0.95)
    # A one-sided 95 % bound is the upper end of a two-sided 90 % exact interval.
    expected = binomtest(count, 500).proportion_ci(confidence_level=0.90, method="exact").high
    assert result["pi_upper"] == pytest.approx(expected, rel=1e-9)
    assert result["pi_point"] == pytest.approx(count / 500)
    assert result["max_copy_count"] == count


def test_privacy_risk_known_values():
    # With no copies the bound solves (1 - p)^n = alpha.
    result = privacy_risk_index([0, 0], num_generated=100, confidence=0.95)
    assert result["pi_upper"] == pytest.approx(1 - 0.05 ** (1 / 100))
    assert result["pi_point"] == 0.0
    full = privacy_risk_index([10], num_generated=10, threshold=0.5)
    assert full["pi_upper"] == 1.0
    assert full["below_threshold"] is False


def test_privacy_risk_rejects_bad_counts():
    with pytest.raises(ValueError, match="exceeds num_generated"):
        privacy_risk_index([11], num_generated=10)
    with pytest.raises(ValueError, match="num_generated"):
        privacy_risk_index([1], num_generated=0)
    with pytest.raises(ValueError, match="confidence"):
        privacy_risk_index([1], num_generated=10, confidence=95)
