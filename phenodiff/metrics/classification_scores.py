"""Accuracy, macro F1 and macro one-vs-rest AUROC computed with scikit-learn, overall and per subgroup.

A class whose references in a (sub)set are all positive or all negative has no defined AUROC. It is reported
as None and listed under ``auroc_undefined``, and the macro AUROC averages the classes where it is defined
(None when there is none). With every class defined, the macro value equals
``sklearn.metrics.roc_auc_score(..., multi_class="ovr", average="macro")`` for single-label data and
``roc_auc_score(..., average="macro")`` for multi-label data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score


def _one_vs_rest_auroc(indicator: np.ndarray, scores: np.ndarray) -> tuple[list[float | None], list[int]]:
    """Return the AUROC of each column and the columns where it is undefined (one class only)."""
    values: list[float | None] = []
    undefined: list[int] = []
    for column in range(indicator.shape[1]):
        if np.unique(indicator[:, column]).size < 2:
            values.append(None)
            undefined.append(column)
        else:
            values.append(float(roc_auc_score(indicator[:, column], scores[:, column])))
    return values, undefined


def _scores(probabilities: np.ndarray, references: np.ndarray, multi_label: bool, threshold: float, class_names: list[str]) -> dict:
    num_classes = probabilities.shape[1]
    if multi_label:
        predicted = (probabilities >= threshold).astype(int)
        indicator = references.astype(int)
        result = {
            "accuracy": float(accuracy_score(indicator, predicted)),
            "label_accuracy": float(1.0 - hamming_loss(indicator, predicted)),
            "macro_f1": float(f1_score(indicator, predicted, average="macro", zero_division=0)),
        }
    else:
        predicted = probabilities.argmax(axis=1)
        labels = references.astype(int)
        indicator = np.eye(num_classes, dtype=int)[labels]
        result = {
            "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=list(range(num_classes)), average="macro", zero_division=0)),
        }
    per_class, undefined = _one_vs_rest_auroc(indicator, probabilities)
    defined = [value for value in per_class if value is not None]
    result["macro_auroc"] = float(np.mean(defined)) if defined else None
    result["auroc_per_class"] = dict(zip(class_names, per_class))
    result["auroc_undefined"] = [class_names[i] for i in undefined]
    result["num_samples"] = int(probabilities.shape[0])
    return result


def classification_scores(
    probabilities: np.ndarray | Sequence,
    references: np.ndarray | Sequence,
    *,
    multi_label: bool | None = None,
    groups: Sequence[str] | None = None,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Compute accuracy, macro F1 and macro one-vs-rest AUROC, overall and per group.

    Args:
        probabilities: (N, C) class probabilities (single-label) or per-label probabilities (multi-label).
        references: (N,) class indices, or (N, L) multi-hot labels.
        multi_label: Task type; inferred from the shape of ``references`` when None.
        groups: Optional (N,) group names; adds ``per_group`` with the same scores for each group.
        threshold: Decision threshold for multi-label predictions.
        class_names: Names used in ``auroc_per_class``; defaults to "0", "1", ...

    Returns:
        ``accuracy`` (subset accuracy for multi-label data, as ``sklearn.metrics.accuracy_score``),
        ``label_accuracy`` (multi-label only: 1 - Hamming loss), ``macro_f1``, ``macro_auroc``,
        ``auroc_per_class``, ``auroc_undefined``, ``num_samples`` and, with groups, ``per_group``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    references = np.asarray(references)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"probabilities must have shape (N, C) with N >= 1, got {probabilities.shape}.")
    if multi_label is None:
        multi_label = references.ndim == 2
    if multi_label and references.shape != probabilities.shape:
        raise ValueError(f"multi-label references must have shape {probabilities.shape}, got {references.shape}.")
    if not multi_label and references.shape != (probabilities.shape[0],):
        raise ValueError(f"single-label references must have shape ({probabilities.shape[0]},), got {references.shape}.")
    if not multi_label and ((references < 0) | (references >= probabilities.shape[1])).any():
        raise ValueError(f"single-label references must be class indices in 0..{probabilities.shape[1] - 1}.")
    names = [str(i) for i in range(probabilities.shape[1])] if class_names is None else list(class_names)
    if len(names) != probabilities.shape[1]:
        raise ValueError(f"class_names has {len(names)} entries for {probabilities.shape[1]} classes.")

    result = _scores(probabilities, references, multi_label, threshold, names)
    if groups is not None:
        group_array = np.asarray([str(g) for g in groups], dtype=object)
        if group_array.shape != (probabilities.shape[0],):
            raise ValueError(f"groups must have one entry per sample ({probabilities.shape[0]}), got {group_array.shape[0]}.")
        result["per_group"] = {
            name: _scores(probabilities[group_array == name], references[group_array == name], multi_label, threshold, names)
            for name in sorted(set(group_array.tolist()))
        }
    return result
