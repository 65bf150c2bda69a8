"""Privacy risk index PI from per-training-image copy counts, with a one-sided Clopper-Pearson bound."""

import datasets
import evaluate

from phenodiff.metrics.privacy_risk_index import privacy_risk_index

_DESCRIPTION = """
Privacy risk index PI = max_i Pr(a generated image is a copy of training image i). With k_i copies of image
i among n generated images, the point estimate is max_i k_i / n and the bound is max_i of the one-sided
exact (Clopper-Pearson) upper confidence bound at level `confidence`, the Beta(k_i + 1, n - k_i) quantile.
"""

_KWARGS_DESCRIPTION = """
Args:
    copy_counts: number of generated images flagged as copies, per training image.
    num_generated (int, required): number of generated images audited.
    confidence (float, default 0.95): level of the one-sided bound.
    threshold (float, optional): delta_PI; adds `below_threshold` (pi_upper < threshold).
Returns:
    pi_upper, pi_point, max_copy_count, argmax_image, num_generated, confidence, num_training_images,
    and threshold and below_threshold when a threshold is given.
Examples:
    >>> metric = phenodiff.metrics.load_metric("privacy_risk")
    >>> metric.compute(copy_counts=[0, 0, 0], num_generated=1000)["pi_point"]
    0.0
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PrivacyRisk(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"copy_counts": datasets.Value("int64")}),
        )

    def _compute(self, copy_counts, num_generated=None, confidence=0.95, threshold=None):
        if num_generated is None:
            raise ValueError("privacy_risk needs num_generated, the number of generated images audited.")
        return privacy_risk_index(copy_counts, num_generated=num_generated, confidence=confidence, threshold=threshold)
