"""Errors raised by the privacy package.

Every error is a ``ValueError`` subclass whose message names the values at fault and states what to
change. They are raised before any private data is touched wherever the check allows it.
"""

from __future__ import annotations


class PrivacyError(ValueError):
    """Base class of the privacy package's errors."""


class InvalidPrivacyParameterError(PrivacyError):
    """A privacy parameter is outside its valid range (epsilon <= 0, delta >= 1/N, sample rate > 1, ...)."""


class UnreachablePrivacyTargetError(PrivacyError):
    """No noise multiplier up to the configured maximum meets the target (epsilon, delta) for the schedule.

    Attributes:
        target_epsilon: The requested epsilon.
        target_delta: The requested delta.
        sample_rate: The Poisson sampling rate q (expected batch size / dataset size).
        steps: The planned number of optimiser steps.
        max_noise_multiplier: The largest noise multiplier that was allowed.
    """

    def __init__(
        self,
        *,
        target_epsilon: float,
        target_delta: float,
        sample_rate: float,
        steps: int,
        max_noise_multiplier: float,
        dataset_size: int | None = None,
        detail: str = "",
    ):
        self.target_epsilon = target_epsilon
        self.target_delta = target_delta
        self.sample_rate = sample_rate
        self.steps = steps
        self.max_noise_multiplier = max_noise_multiplier
        self.dataset_size = dataset_size
        data = ""
        if dataset_size is not None:
            data = f" (expected batch size {sample_rate * dataset_size:g} of {dataset_size} records)"
        reason = f" {detail}" if detail else ""
        super().__init__(
            f"Target epsilon {target_epsilon:g} at delta {target_delta:g} cannot be reached with sample rate "
            f"{sample_rate:g}{data} over {steps} steps: it needs a noise multiplier above {max_noise_multiplier:g}.{reason} "
            "Use more data, fewer steps, a smaller batch (lower sample rate) or a larger target epsilon."
        )


class MissingSensitivityBoundError(PrivacyError):
    """A Gaussian mechanism was requested without a finite clipping bound, so its sensitivity is unbounded.

    Noise added to an unbounded quantity is data augmentation and carries no differential-privacy guarantee.
    """


class LedgerStateError(PrivacyError):
    """A privacy ledger state is malformed or does not match the ledger it is loaded into."""


class AuditInputError(PrivacyError):
    """Inputs to the memorisation audit have inconsistent shapes, sizes or values."""


class AuditCalibrationError(AuditInputError):
    """Too few held-out images to calibrate a copy threshold at the requested false-flag rate."""
