"""Expected calibration error with equal-width confidence bins."""

import datasets
import evaluate
import numpy as np

from phenodiff.uncertainty.calibration import DEFAULT_NUM_BINS, calibration_from_probabilities

_DESCRIPTION = """
Expected calibration error, ECE = sum_m (|B_m| / n) |acc(B_m) - conf(B_m)|, over `num_bins` equal-width
confidence bins ((m-1)/M, m/M] (15 by default). Single-label data (integer references): one prediction per
sample, with confidence max_c p_c. Multi-label data (0/1 list references): one binary prediction per
(sample, label), with confidence max(p, 1 - p) and the decision at threshold 0.5.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: probability vectors, softmax (single-label) or per-label sigmoid (multi-label).
    references: class indices (int), or 0/1 lists for multi-label data.
    num_bins (int, default 15): number of equal-width bins over [0, 1].
Returns:
    ece (fraction), num_bins, bin_edges, bin_count, bin_confidence, bin_accuracy (None for empty bins),
    num_predictions.
Examples:
    >>> metric = phenodiff.metrics.load_metric("ece")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.4, 0.6]], references=[1, 0], num_bins=10)["ece"]
    0.35
"""

_CITATION = """
@inproceedings{guo2017calibration,
  title={On calibration of modern neural networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q},
  booktitle={International Conference on Machine Learning},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpectedCalibrationError(evaluate.Metric):
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

    def _compute(self, predictions, references, num_bins=DEFAULT_NUM_BINS):
        references = np.asarray(references)
        result = calibration_from_probabilities(
            np.asarray(predictions, dtype=np.float64), references, multi_label=references.ndim == 2, num_bins=num_bins
        )
        return result.to_dict()
