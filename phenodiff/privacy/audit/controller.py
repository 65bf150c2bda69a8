"""Continuous audit control: what training does when the privacy risk index breaches its threshold.

The training loop audits every N steps, passes the privacy risk index to
:meth:`AuditController.decide`, and applies the returned action:

- ``"continue"``: PI is below the threshold.
- ``"raise_noise"``: train on with the larger noise multiplier in ``action.noise_multiplier``. Record
  the following steps in the privacy ledger with that multiplier so epsilon is re-accounted (more noise
  per step spends less epsilon per step, and the ledger's ``would_exceed`` uses the last recorded one).
- ``"halt"``: stop training and synthesis. A halted controller returns ``"halt"`` from then on.

Every decision is logged with its reason through ``logging`` (info for continue, warning otherwise)
and kept in :attr:`AuditController.history`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..accounting import DEFAULT_MAX_NOISE_MULTIPLIER
from ..errors import AuditInputError
from .report import AuditReport
from .risk import minimum_generated_images

logger = logging.getLogger(__name__)

Policy = Literal["raise_noise", "halt"]
Basis = Literal["upper_bound", "estimate"]


@dataclass
class ControllerAction:
    """One decision of the controller.

    Attributes:
        kind: ``"continue"``, ``"raise_noise"`` or ``"halt"``.
        noise_multiplier: Noise multiplier to train with from now on (unchanged unless ``raise_noise``).
        reason: Why, in a sentence, with the numbers compared.
        pi_estimate: PI point estimate the decision saw.
        pi_upper: PI upper bound the decision saw.
        step: Training step, if given.
    """

    kind: str
    noise_multiplier: float
    reason: str
    pi_estimate: float
    pi_upper: float
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditController:
    """Decide, from the audited privacy risk index, whether training continues, adds noise or halts.

    Args:
        delta_pi: Threshold of the constraint PI < delta_pi.
        policy: ``"raise_noise"`` multiplies the noise multiplier by ``noise_factor`` on a breach, up to
            ``max_noise_multiplier``, and halts when it is already there. ``"halt"`` halts on a breach.
        noise_factor: Factor (> 1) applied to the noise multiplier on a breach.
        max_noise_multiplier: Largest noise multiplier the policy may set.
        basis: ``"upper_bound"`` (default) counts a breach when the PI upper confidence bound reaches
            delta_pi, so training continues only while PI < delta_pi is certified. ``"estimate"``
            compares the point estimate, which tolerates audits too small to certify.
        confidence: Confidence level of the upper bound, used to name the audit size that can certify.
    """

    def __init__(
        self,
        *,
        delta_pi: float,
        policy: Policy,
        noise_factor: float = 1.5,
        max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
        basis: Basis = "upper_bound",
        confidence: float = 0.95,
    ):
        if not (0.0 < delta_pi < 1.0):
            raise AuditInputError(f"delta_pi must lie in (0, 1), got {delta_pi!r}.")
        if policy not in ("raise_noise", "halt"):
            raise AuditInputError(f"policy must be 'raise_noise' or 'halt', got {policy!r}.")
        if not (math.isfinite(noise_factor) and noise_factor > 1.0):
            raise AuditInputError(f"noise_factor must be a finite number > 1, got {noise_factor!r}.")
        if not (math.isfinite(max_noise_multiplier) and max_noise_multiplier > 0.0):
            raise AuditInputError(f"max_noise_multiplier must be a finite number > 0, got {max_noise_multiplier!r}.")
        if basis not in ("upper_bound", "estimate"):
            raise AuditInputError(f"basis must be 'upper_bound' or 'estimate', got {basis!r}.")
        self.delta_pi = float(delta_pi)
        self.policy = policy
        self.noise_factor = float(noise_factor)
        self.max_noise_multiplier = float(max_noise_multiplier)
        self.basis = basis
        self.confidence = confidence
        self.minimum_generated = minimum_generated_images(self.delta_pi, confidence=confidence)
        self.halted = False
        self.history: list[ControllerAction] = []

    def decide(
        self,
        *,
        pi_estimate: float,
        pi_upper: float,
        noise_multiplier: float,
        n_generated: int | None = None,
        step: int | None = None,
    ) -> ControllerAction:
        """Return the action for the latest audit and log its reason.

        Args:
            pi_estimate: PI point estimate of the audit.
            pi_upper: PI upper confidence bound of the audit.
            noise_multiplier: Noise multiplier training uses now.
            n_generated: Generated images in the audit. When too few to certify delta_pi, the reason names the number needed.
            step: Training step, for the log and the history.
        """
        if not (0.0 <= pi_estimate <= pi_upper <= 1.0):
            raise AuditInputError(f"Expected 0 <= pi_estimate <= pi_upper <= 1, got {pi_estimate!r} and {pi_upper!r}.")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0.0):
            raise AuditInputError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}.")
        at = f" at step {step}" if step is not None else ""
        compared = pi_upper if self.basis == "upper_bound" else pi_estimate
        name = "PI upper bound" if self.basis == "upper_bound" else "PI estimate"
        small_audit = ""
        if n_generated is not None and n_generated < self.minimum_generated and self.basis == "upper_bound":
            small_audit = (
                f" The audit of {n_generated} images cannot certify PI < {self.delta_pi:g} even with zero copies; "
                f"generate at least {self.minimum_generated}."
            )

        if self.halted:
            kind, new_noise = "halt", noise_multiplier
            reason = f"Halted earlier; {name} is now {compared:.3g}{at}. Build a new controller to resume after review."
        elif compared < self.delta_pi:
            kind, new_noise = "continue", noise_multiplier
            reason = f"{name} {compared:.3g} is below delta_PI {self.delta_pi:g}{at}."
        elif self.policy == "halt":
            kind, new_noise = "halt", noise_multiplier
            reason = f"{name} {compared:.3g} reached delta_PI {self.delta_pi:g}{at}; policy 'halt' stops training and synthesis.{small_audit}"
        elif noise_multiplier >= self.max_noise_multiplier:
            kind, new_noise = "halt", noise_multiplier
            reason = (
                f"{name} {compared:.3g} reached delta_PI {self.delta_pi:g}{at} and the noise multiplier {noise_multiplier:g} "
                f"is already at the maximum {self.max_noise_multiplier:g}; halting.{small_audit}"
            )
        else:
            kind = "raise_noise"
            new_noise = min(noise_multiplier * self.noise_factor, self.max_noise_multiplier)
            reason = (
                f"{name} {compared:.3g} reached delta_PI {self.delta_pi:g}{at}; raising the noise multiplier from "
                f"{noise_multiplier:g} to {new_noise:g}. Record the next steps in the ledger with it.{small_audit}"
            )

        if kind == "halt":
            self.halted = True
        action = ControllerAction(kind=kind, noise_multiplier=float(new_noise), reason=reason, pi_estimate=float(pi_estimate), pi_upper=float(pi_upper), step=step)
        self.history.append(action)
        log = logger.info if kind == "continue" else logger.warning
        log("Audit controller: %s. %s", kind, reason)
        return action

    def decide_from_report(self, report: AuditReport, *, noise_multiplier: float) -> ControllerAction:
        """Return :meth:`decide` for the overall privacy risk index of ``report``."""
        risk = report.privacy_risk
        return self.decide(
            pi_estimate=risk.estimate,
            pi_upper=risk.upper,
            noise_multiplier=noise_multiplier,
            n_generated=risk.n_generated,
            step=report.step,
        )
