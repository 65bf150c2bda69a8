"""Accuracy, macro F1 and macro one-vs-rest AUROC (scikit-learn), overall and per subgroup."""

import datasets
import evaluate

from phenodiff.metrics.classification_scores import classification_scores

_DESCRIPTION = """
Accuracy, macro F1 and macro one-vs-rest AUROC, computed with scikit-learn from probability vectors. For
multi-label data `accuracy` is the subset accuracy of sklearn.metrics.accuracy_score and `label_accuracy`
is 1 - Hamming loss. A class whose references are all one value (overall or inside a group) has no AUROC:
it is None and listed in `auroc_undefined`, and `macro_auroc` averages the defined classes (None if none).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: probability vectors, softmax (single-label) or per-label sigmoid (multi-label).
    references: class indices (int), or 0/1 lists for multi-label data.
    groups (list of str, optional): group name per sample; adds `per_group` with the same scores.
    threshold (float, default 0.5): decision threshold for multi-label data.
    class_names (list of str, optional): names used in `auroc_per_class`.
Returns:
    accuracy, label_accuracy (multi-label only), macro_f1, macro_auroc, auroc_per_class, auroc_undefined,
    num_samples, and per_group when groups are given.
Examples:
    >>> metric = phenodiff.metrics.load_metric("classification")
    >>> metric.compute(predictions=[[0.8, 0.2], [0.3, 0.7]], references=[0, 1])["accuracy"]
    1.0
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, groups=None, threshold=0.5, class_names=None):
        return classification_scores(
            predictions, references, groups=groups, threshold=threshold, class_names=class_names
        )
