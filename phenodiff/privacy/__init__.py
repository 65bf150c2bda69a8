"""Differential privacy and memorisation audits.

- :mod:`.accounting`: noise calibration for DP-SGD and the :class:`PrivacyLedger` of every mechanism
  that saw private data (opacus accountants, basic composition across components).
- :mod:`.gaussian_mechanism`: the Gaussian mechanism for clipped statistics of the private data.
- :mod:`.audit`: embeddings, exact nearest-neighbour search, copy flags, privacy risk index,
  membership-inference AUC, the release filter and the continuous-audit controller.
"""

from .accounting import (
    ComponentReport,
    LedgerReport,
    PrivacyLedger,
    compute_epsilon,
    noise_multiplier_for_target,
    sample_rate_for,
)
from .errors import (
    AuditCalibrationError,
    AuditInputError,
    InvalidPrivacyParameterError,
    LedgerStateError,
    MissingSensitivityBoundError,
    PrivacyError,
    UnreachablePrivacyTargetError,
)
from .gaussian_mechanism import (
    GaussianRelease,
    analytic_gaussian_sigma,
    clip_rows,
    clipped_mean,
    release_mean,
    release_quantiles,
)

__all__ = [
    "AuditCalibrationError",
    "AuditInputError",
    "ComponentReport",
    "GaussianRelease",
    "InvalidPrivacyParameterError",
    "LedgerReport",
    "LedgerStateError",
    "MissingSensitivityBoundError",
    "PrivacyError",
    "PrivacyLedger",
    "UnreachablePrivacyTargetError",
    "analytic_gaussian_sigma",
    "clip_rows",
    "clipped_mean",
    "compute_epsilon",
    "noise_multiplier_for_target",
    "release_mean",
    "release_quantiles",
    "sample_rate_for",
]
