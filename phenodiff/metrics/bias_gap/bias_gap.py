"""Bias gap: per-group accuracies, the mean absolute deviation of the group accuracies, and the worst group."""

import datasets
import evaluate

from phenodiff.fairness.bias import bias_gap

_DESCRIPTION = """
Per-group accuracy and the bias gap Bias = (1/|G|) sum_g |Acc_g - mean_g Acc_g| over demographic groups,
plus the worst group. Groups with fewer than `min_group_size` samples are listed in `small_groups`.
For multi-label data, a sample's accuracy is the fraction of its labels predicted correctly.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class indices (int), or 0/1 lists for multi-label data.
    references: true labels in the same form.
    groups: the demographic group name of each sample.
    min_group_size (int, default 1): groups smaller than this are flagged in `small_groups`.
    exclude_small_groups (bool, default False): leave the flagged groups out of `gap` and `worst_group`.
Returns:
    group_accuracy, group_size, gap (fraction), gap_percent, worst_group, worst_accuracy, small_groups,
    excluded_groups, min_group_size.
Examples:
    >>> metric = phenodiff.metrics.load_metric("bias_gap")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 1], groups=["a", "a", "b", "b"])["gap"]
    0.25
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BiasGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("int64"),
                        "references": datasets.Value("int64"),
                        "groups": datasets.Value("string"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("int64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                        "groups": datasets.Value("string"),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, groups, min_group_size=1, exclude_small_groups=False):
        report = bias_gap(
            predictions, references, groups, min_group_size=min_group_size, exclude_small_groups=exclude_small_groups
        )
        return report.to_dict()
