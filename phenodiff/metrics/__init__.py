"""The project's metrics as Hugging Face ``evaluate`` modules shipped inside the package, loadable offline.

``evaluate.load("accuracy")`` and other hub metrics need the network; a module folder loads by path without
it. :func:`load_metric` loads one of :data:`METRIC_NAMES` by its path inside this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .classification_scores import classification_scores
from .privacy_risk_index import clopper_pearson_upper, privacy_risk_index

METRIC_NAMES = ("bias_gap", "classification", "ece", "privacy_risk")


def metric_path(name: str) -> Path:
    """Return the folder of the metric module ``name`` inside the installed package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; valid names are {list(METRIC_NAMES)}.")
    return Path(__file__).resolve().parent / name


def load_metric(name: str, **kwargs: Any):
    """Load a project metric with ``evaluate.load`` from its folder in the package; no network is used.

    Keyword arguments go to ``evaluate.load`` (for example ``keep_in_memory=True`` or ``experiment_id``).
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = ["METRIC_NAMES", "classification_scores", "clopper_pearson_upper", "load_metric", "metric_path", "privacy_risk_index"]
