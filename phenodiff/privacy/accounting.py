"""Privacy accounting: noise calibration for DP-SGD and a ledger of every mechanism that saw private data.

All accounting of the Poisson-subsampled Gaussian mechanism (DP-SGD) is done by opacus' accountants:

- ``"prv"``: :class:`opacus.accountants.PRVAccountant`, numerical composition of privacy loss random
  variables (Gopi, Lee & Wutschitz, 2021). It returns an upper bound on epsilon with an error of at most
  ``eps_error`` (opacus' default 0.01). It is the default of ``opacus.PrivacyEngine`` and of this module.
- ``"rdp"``: :class:`opacus.accountants.RDPAccountant`, Renyi DP of the sampled Gaussian mechanism
  (opacus' port of TF Privacy's RDP accountant), converted to (epsilon, delta). Faster, slightly looser.

Both use opacus' add/remove-one-record adjacency, which Poisson sampling requires.

NOTE: the protected unit is one record (one image). A patient with k images in the training data is
protected only at the group-privacy level of k records, which is weaker than epsilon.

Composition across components is basic composition (Dwork & Roth, 2014): if component
``j`` is (epsilon_j, delta_j)-DP on the same private data, the whole run is
(sum_j epsilon_j, sum_j delta_j)-DP. This is valid for any mechanisms, adaptive or not, but loose. Steps
of one DP-SGD component are composed tightly by its opacus accountant.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal

from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from .errors import InvalidPrivacyParameterError, LedgerStateError, UnreachablePrivacyTargetError

logger = logging.getLogger(__name__)

AccountantName = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

# Guard against schedules that reach the target only with absurd noise. With noise multiplier sigma, the
# noise on the averaged clipped gradient has standard deviation sigma * C / B per coordinate, for
# clipping norm C and expected batch size B. Sigma above ~20 therefore swamps the signal unless B is in
# the thousands. Callers with very large batches may raise the limit.
DEFAULT_MAX_NOISE_MULTIPLIER = 20.0

LEDGER_FORMAT = "phenodiff.privacy.ledger"
LEDGER_VERSION = 1

# Cached epsilons per (accountant, history, delta), because one PRV evaluation of a 2,000-step history
# took 0.3 s on 2 CPU cores, and far longer for tens of thousands of steps at high sample rates.
_EPSILON_CACHE_SIZE = 64

# Accountant histories are lists of (noise_multiplier, sample_rate, steps) tuples, the opacus format.
HistoryEntry = tuple[float, float, int]


# ---------------------------------------------------------------------------------------------- checks
def validate_epsilon(epsilon: float, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float, or raise :class:`InvalidPrivacyParameterError` unless it is finite and > 0."""
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0.0:
        raise InvalidPrivacyParameterError(f"{name} must be a finite number > 0, got {epsilon!r}.")
    return epsilon


def validate_delta(delta: float, *, dataset_size: int | None = None, name: str = "delta") -> float:
    """Return ``delta`` as a float, or raise :class:`InvalidPrivacyParameterError`.

    ``delta`` must lie in (0, 1). With ``dataset_size`` N given it must also be below 1/N: a mechanism that
    publishes one random record in full is (0, 1/N)-DP, so delta >= 1/N permits exactly that.
    """
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise InvalidPrivacyParameterError(f"{name} must lie in (0, 1), got {delta!r}.")
    if dataset_size is not None:
        dataset_size = _validate_dataset_size(dataset_size)
        if delta >= 1.0 / dataset_size:
            raise InvalidPrivacyParameterError(
                f"{name}={delta:g} is not below 1/N = {1.0 / dataset_size:g} for N={dataset_size} private records, "
                "so the guarantee would allow publishing a whole record. Choose delta below 1/N "
                f"(a common choice is 1/N^1.1 = {dataset_size ** -1.1:.3g})."
            )
    return delta


def validate_sample_rate(sample_rate: float) -> float:
    """Return ``sample_rate`` as a float, or raise :class:`InvalidPrivacyParameterError` unless 0 < q <= 1."""
    sample_rate = float(sample_rate)
    if not (0.0 < sample_rate <= 1.0):
        raise InvalidPrivacyParameterError(
            f"sample_rate must lie in (0, 1], got {sample_rate!r}. It is the Poisson sampling rate "
            "q = expected batch size / dataset size."
        )
    return sample_rate


def _validate_dataset_size(dataset_size: int) -> int:
    if isinstance(dataset_size, bool) or int(dataset_size) != dataset_size or dataset_size < 1:
        raise InvalidPrivacyParameterError(f"dataset_size must be a positive integer, got {dataset_size!r}.")
    return int(dataset_size)


def _validate_steps(steps: int, *, name: str = "steps", allow_zero: bool = False) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise InvalidPrivacyParameterError(f"{name} must be an integer {bound}, got {steps!r}.")
    return int(steps)


def _validate_noise_multiplier(noise_multiplier: float) -> float:
    noise_multiplier = float(noise_multiplier)
    if not math.isfinite(noise_multiplier) or noise_multiplier <= 0.0:
        raise InvalidPrivacyParameterError(
            f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}. "
            "A noise multiplier of 0 gives no privacy guarantee; train without the ledger instead."
        )
    return noise_multiplier


def _validate_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise InvalidPrivacyParameterError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")
    return accountant


def sample_rate_for(*, expected_batch_size: int, dataset_size: int) -> float:
    """Return the Poisson sampling rate q = expected batch size / dataset size, as opacus' DPDataLoader uses it."""
    dataset_size = _validate_dataset_size(dataset_size)
    if expected_batch_size < 1 or expected_batch_size > dataset_size:
        raise InvalidPrivacyParameterError(
            f"expected_batch_size must lie in [1, dataset_size={dataset_size}], got {expected_batch_size!r}."
        )
    return expected_batch_size / dataset_size


# ------------------------------------------------------------------------------------------ epsilon
def _epsilon_from_history(history: list[HistoryEntry], *, delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    instance = create_accountant(mechanism=accountant)
    instance.history = [tuple(entry) for entry in history]
    with _quiet_rdp_grid_warning():
        return float(instance.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_rdp_grid_warning() -> Iterator[None]:
    """Silence RDP's warning that the best order is the largest of its grid.

    It appears only at epsilons far beyond any useful target (and during the noise search, which
    passes through them). The epsilon is still a valid upper bound, and callers cannot change the grid.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantName = "prv",
) -> float:
    """Return the epsilon at ``delta`` of ``steps`` DP-SGD steps with noise multiplier sigma and sampling rate q.

    Computed by the opacus accountant named by ``accountant`` on the history ``[(sigma, q, steps)]``.
    """
    history = [(_validate_noise_multiplier(noise_multiplier), validate_sample_rate(sample_rate), _validate_steps(steps))]
    return _epsilon_from_history(history, delta=validate_delta(delta), accountant=_validate_accountant(accountant))


def noise_multiplier_for_target(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "prv",
    dataset_size: int | None = None,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
    epsilon_tolerance: float = 0.01,
) -> float:
    """Return the smallest noise multiplier (to ``epsilon_tolerance``) whose DP-SGD run meets the target.

    The search is ``opacus.accountants.utils.get_noise_multiplier`` (bisection on sigma). The returned
    sigma satisfies epsilon(sigma, q, steps, delta) <= target_epsilon under the chosen accountant, and
    target_epsilon - epsilon <= ``epsilon_tolerance``.

    Args:
        target_epsilon: Epsilon that the whole schedule may spend.
        target_delta: Delta of the guarantee. Below 1/``dataset_size`` when that is given.
        sample_rate: Poisson sampling rate q = expected batch size / dataset size.
        steps: Planned number of optimiser steps.
        accountant: ``"prv"`` or ``"rdp"`` (see the module docstring).
        dataset_size: Number of private records N, used to check delta < 1/N and to word the error.
        max_noise_multiplier: Largest sigma considered usable (see ``DEFAULT_MAX_NOISE_MULTIPLIER``).
        epsilon_tolerance: Bisection precision on epsilon.

    Raises:
        InvalidPrivacyParameterError: a parameter is out of range, including delta >= 1/N.
        UnreachablePrivacyTargetError: even ``max_noise_multiplier`` spends more than ``target_epsilon``,
            or opacus' search fails. Raised before any training, so the schedule can be changed.
    """
    target_epsilon = validate_epsilon(target_epsilon, name="target_epsilon")
    target_delta = validate_delta(target_delta, dataset_size=dataset_size, name="target_delta")
    sample_rate = validate_sample_rate(sample_rate)
    steps = _validate_steps(steps)
    accountant = _validate_accountant(accountant)
    max_noise_multiplier = _validate_noise_multiplier(max_noise_multiplier)

    def unreachable(detail: str) -> UnreachablePrivacyTargetError:
        return UnreachablePrivacyTargetError(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            max_noise_multiplier=max_noise_multiplier,
            dataset_size=dataset_size,
            detail=detail,
        )

    # 1. Epsilon decreases as sigma grows, so one evaluation at the maximum decides reachability and
    #    spares opacus' doubling search, which only gives up at sigma = 1e6.
    epsilon_at_max = _epsilon_from_history([(max_noise_multiplier, sample_rate, steps)], delta=target_delta, accountant=accountant)
    if epsilon_at_max > target_epsilon:
        raise unreachable(f"At noise multiplier {max_noise_multiplier:g} the {accountant} accountant gives epsilon {epsilon_at_max:.4g}.")

    # 2. Bisection by opacus.
    try:
        with _quiet_rdp_grid_warning():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as error:
        raise unreachable(f"opacus' noise search failed: {error}") from error
    sigma = float(sigma)
    if sigma > max_noise_multiplier:
        raise unreachable(f"opacus' search returned noise multiplier {sigma:.4g}.")
    logger.info(
        "Noise multiplier %.4g meets epsilon %.4g at delta %.3g (q=%.4g, %d steps, %s accountant).",
        sigma, target_epsilon, target_delta, sample_rate, steps, accountant,
    )
    return sigma


# ------------------------------------------------------------------------------------------ reports
@dataclass
class ComponentReport:
    """Privacy spent by one component of a run.

    Attributes:
        name: Component name, e.g. ``"unet+phenotype_encoder"``.
        mechanism: ``"dp-sgd"`` (subsampled Gaussian, opacus accountant) or ``"gaussian"`` (one-off releases).
        epsilon: Epsilon spent so far (0 before the first step or release).
        delta: Delta of that guarantee (0 before the first step or release).
        steps: DP-SGD steps taken, or number of Gaussian releases.
        accountant: ``"prv"``/``"rdp"`` for DP-SGD, ``"analytic-gaussian"`` for releases.
        note: Free text, e.g. which data the component was trained on.
    """

    name: str
    mechanism: str
    epsilon: float
    delta: float
    steps: int
    accountant: str
    note: str = ""


@dataclass
class LedgerReport:
    """Per-component and total privacy of a run, JSON-serialisable with :meth:`to_dict`.

    ``total_epsilon`` and ``total_delta`` are sums over components (basic composition).
    """

    components: list[ComponentReport]
    total_epsilon: float
    total_delta: float
    composition: str = "basic composition: (sum of epsilons, sum of deltas) over components on the same data"
    adjacency: str = "add/remove one record"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _GaussianRelease:
    epsilon: float
    delta: float
    noise_std: float
    sensitivity: float
    note: str = ""


@dataclass
class _Component:
    name: str
    mechanism: str
    note: str = ""
    accountant: IAccountant | None = None
    releases: list[_GaussianRelease] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- ledger
class PrivacyLedger:
    """Record of every component that saw private data, and their composed (epsilon, delta).

    Two kinds of component:

    - DP-SGD (:meth:`add_dp_sgd_component`): owns an opacus accountant. Each of its steps is recorded
      with :meth:`record_steps`, or by attaching the accountant to an opacus optimiser
      (``optimizer.attach_step_hook(ledger.accountant(name).get_optimizer_hook_fn(sample_rate=q))``,
      or ``privacy_engine.accountant = ledger.accountant(name)`` before ``make_private``). Its epsilon
      is reported at the ledger's ``delta``.
    - Gaussian releases (:meth:`record_gaussian_release`, called by
      :mod:`phenodiff.privacy.gaussian_mechanism`): each release carries the (epsilon, delta) it was
      calibrated for, and releases under one name add up.

    The run is (``total_epsilon()``, ``total_delta()``)-DP by basic composition: the sum of the
    component epsilons and the sum of their deltas. A component with no step or release adds nothing.

    Args:
        delta: Delta at which every DP-SGD component is reported.
        accountant: opacus accountant for DP-SGD components, ``"prv"`` or ``"rdp"``.
        dataset_size: Number of private records N. When given, the committed total delta must stay below
            1/N, checked whenever a component or release is added.
    """

    def __init__(self, *, delta: float, accountant: AccountantName = "prv", dataset_size: int | None = None):
        self.delta = validate_delta(delta, dataset_size=dataset_size)
        self.accountant_name = _validate_accountant(accountant)
        self.dataset_size = None if dataset_size is None else _validate_dataset_size(dataset_size)
        self._components: OrderedDict[str, _Component] = OrderedDict()
        self._epsilon_cache: OrderedDict[tuple, float] = OrderedDict()

    # ------------------------------------------------------------------ registration
    def add_dp_sgd_component(self, name: str, *, note: str = "") -> IAccountant:
        """Register a DP-SGD component and return its opacus accountant (empty history)."""
        self._check_new_name(name)
        self._check_committed_delta(extra_delta=self.delta, what=f"DP-SGD component {name!r}")
        accountant = create_accountant(mechanism=self.accountant_name)
        self._components[name] = _Component(name=name, mechanism="dp-sgd", note=note, accountant=accountant)
        return accountant

    def accountant(self, name: str) -> IAccountant:
        """Return the opacus accountant of DP-SGD component ``name``, to attach to an optimiser or engine."""
        return self._dp_sgd_component(name).accountant

    def components(self) -> list[str]:
        """Names of the registered components, in registration order."""
        return list(self._components)

    # ------------------------------------------------------------------ recording
    def record_steps(self, name: str, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` DP-SGD steps of component ``name`` taken with (sigma, q)."""
        component = self._dp_sgd_component(name)
        noise_multiplier = _validate_noise_multiplier(noise_multiplier)
        sample_rate = validate_sample_rate(sample_rate)
        steps = _validate_steps(steps)
        component.accountant.history = _append_steps(component.accountant.history, noise_multiplier, sample_rate, steps)

    def record_gaussian_release(
        self,
        name: str,
        *,
        epsilon: float,
        delta: float,
        noise_std: float,
        sensitivity: float,
        note: str = "",
    ) -> None:
        """Record one release of the Gaussian mechanism, (epsilon, delta)-DP as calibrated by its caller.

        The component ``name`` is created on its first release. Use
        :func:`phenodiff.privacy.gaussian_mechanism.release_mean` or ``release_quantiles``, which calibrate
        the noise and call this method, rather than calling it by hand.
        """
        epsilon = validate_epsilon(epsilon)
        delta = validate_delta(delta, dataset_size=self.dataset_size)
        noise_std = float(noise_std)
        sensitivity = float(sensitivity)
        if not (math.isfinite(sensitivity) and sensitivity > 0 and math.isfinite(noise_std) and noise_std > 0):
            raise InvalidPrivacyParameterError(
                f"A Gaussian release needs a finite sensitivity > 0 and noise_std > 0, got sensitivity={sensitivity!r}, "
                f"noise_std={noise_std!r}."
            )
        component = self._components.get(name)
        if component is None:
            self._check_new_name(name)
            component = _Component(name=name, mechanism="gaussian", note=note)
        elif component.mechanism != "gaussian":
            raise LedgerStateError(f"Component {name!r} is a {component.mechanism} component; record Gaussian releases under another name.")
        self._check_committed_delta(extra_delta=delta, what=f"Gaussian release of {name!r}")
        component.releases.append(_GaussianRelease(epsilon=epsilon, delta=delta, noise_std=noise_std, sensitivity=sensitivity, note=note))
        self._components[name] = component
        logger.info("Recorded Gaussian release %r: epsilon %.4g at delta %.3g.", name, epsilon, delta)

    # ------------------------------------------------------------------ queries
    def component_epsilon(self, name: str) -> float:
        """Epsilon spent by component ``name`` (at the ledger delta for DP-SGD, summed over releases otherwise)."""
        component = self._component(name)
        if component.mechanism == "dp-sgd":
            return self._cached_epsilon(component.accountant.history)
        return float(sum(release.epsilon for release in component.releases))

    def component_delta(self, name: str) -> float:
        """Delta of component ``name``'s guarantee: 0 before it is used."""
        component = self._component(name)
        if component.mechanism == "dp-sgd":
            return self.delta if component.accountant.history else 0.0
        return float(sum(release.delta for release in component.releases))

    def total_epsilon(self) -> float:
        """Sum of the component epsilons (basic composition)."""
        return float(sum(self.component_epsilon(name) for name in self._components))

    def total_delta(self) -> float:
        """Sum of the component deltas (basic composition)."""
        return float(sum(self.component_delta(name) for name in self._components))

    def would_exceed(
        self,
        *,
        target_epsilon: float,
        extra_steps: int = 1,
        component: str | None = None,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> bool:
        """Return whether taking ``extra_steps`` more DP-SGD steps would push the total epsilon above the target.

        Call it before the steps: training that stops when it returns True never exceeds the target.
        The steps are assumed to use ``noise_multiplier`` and ``sample_rate``, which default to those of the
        component's last recorded step. With PRV accounting each call costs up to a second on a long
        history, so check every few steps with ``extra_steps`` set to that interval.

        Args:
            target_epsilon: Total epsilon that the run may spend (all components together).
            extra_steps: Steps planned before the next check.
            component: DP-SGD component that takes the steps; may be omitted when there is only one.
            noise_multiplier: Sigma of the planned steps (default: the last recorded one).
            sample_rate: Sampling rate of the planned steps (default: the last recorded one).
        """
        target_epsilon = validate_epsilon(target_epsilon, name="target_epsilon")
        extra_steps = _validate_steps(extra_steps, name="extra_steps", allow_zero=True)
        name = self._resolve_dp_sgd_name(component)
        history = self._dp_sgd_component(name).accountant.history
        if noise_multiplier is None or sample_rate is None:
            if not history:
                raise InvalidPrivacyParameterError(
                    f"Component {name!r} has no recorded step to take the noise multiplier and sample rate from; "
                    "pass noise_multiplier and sample_rate."
                )
            noise_multiplier = history[-1][0] if noise_multiplier is None else noise_multiplier
            sample_rate = history[-1][1] if sample_rate is None else sample_rate
        noise_multiplier = _validate_noise_multiplier(noise_multiplier)
        sample_rate = validate_sample_rate(sample_rate)

        planned = _append_steps(history, noise_multiplier, sample_rate, extra_steps) if extra_steps else list(history)
        others = sum(self.component_epsilon(other) for other in self._components if other != name)
        return others + self._cached_epsilon(planned) > target_epsilon

    def report(self) -> LedgerReport:
        """Return per-component epsilons and the composed total."""
        components = []
        for name, component in self._components.items():
            if component.mechanism == "dp-sgd":
                steps = sum(entry[2] for entry in component.accountant.history)
                accountant = self.accountant_name
            else:
                steps = len(component.releases)
                accountant = "analytic-gaussian"
            components.append(
                ComponentReport(
                    name=name,
                    mechanism=component.mechanism,
                    epsilon=self.component_epsilon(name),
                    delta=self.component_delta(name),
                    steps=steps,
                    accountant=accountant,
                    note=component.note,
                )
            )
        return LedgerReport(
            components=components,
            total_epsilon=float(sum(c.epsilon for c in components)),
            total_delta=float(sum(c.delta for c in components)),
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Return the full ledger state as plain JSON types (lists, dicts, floats, ints, strings).

        Floats survive ``json.dumps``/``json.loads`` exactly, so a resumed run continues the same epsilon.
        """
        components = []
        for name, component in self._components.items():
            entry: dict[str, Any] = {"name": name, "mechanism": component.mechanism, "note": component.note}
            if component.mechanism == "dp-sgd":
                entry["accountant"] = component.accountant.mechanism()
                entry["history"] = [[float(sigma), float(q), int(steps)] for sigma, q, steps in component.accountant.history]
            else:
                entry["releases"] = [asdict(release) for release in component.releases]
            components.append(entry)
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "delta": self.delta,
            "accountant": self.accountant_name,
            "dataset_size": self.dataset_size,
            "components": components,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this ledger's components with those of ``state`` (from :meth:`state_dict`).

        Raises:
            LedgerStateError: the state is malformed, or its delta, accountant or dataset size differ from
                this ledger's. A resumed run must report at the same delta with the same accountant, so
                build the ledger with :meth:`from_state_dict` to take them from the state.
        """
        _check_state_header(state)
        for key, mine in (("delta", self.delta), ("accountant", self.accountant_name), ("dataset_size", self.dataset_size)):
            if state[key] != mine:
                raise LedgerStateError(
                    f"Ledger state has {key}={state[key]!r} but this ledger has {key}={mine!r}. "
                    "Construct the ledger with the saved values, or use PrivacyLedger.from_state_dict."
                )
        components: OrderedDict[str, _Component] = OrderedDict()
        for entry in state["components"]:
            component = _component_from_state(entry, accountant_name=self.accountant_name)
            if component.name in components:
                raise LedgerStateError(f"Ledger state lists component {component.name!r} twice.")
            components[component.name] = component
        self._components = components
        self._epsilon_cache.clear()

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "PrivacyLedger":
        """Build a ledger with the delta, accountant and dataset size of ``state`` and load it."""
        _check_state_header(state)
        ledger = cls(delta=state["delta"], accountant=state["accountant"], dataset_size=state["dataset_size"])
        ledger.load_state_dict(state)
        return ledger

    # ------------------------------------------------------------------ helpers
    def _component(self, name: str) -> _Component:
        try:
            return self._components[name]
        except KeyError:
            raise LedgerStateError(f"No component named {name!r}; registered components: {list(self._components)}.") from None

    def _dp_sgd_component(self, name: str) -> _Component:
        component = self._component(name)
        if component.mechanism != "dp-sgd":
            raise LedgerStateError(f"Component {name!r} records Gaussian releases, not DP-SGD steps.")
        return component

    def _resolve_dp_sgd_name(self, component: str | None) -> str:
        if component is not None:
            return component
        names = [name for name, c in self._components.items() if c.mechanism == "dp-sgd"]
        if len(names) != 1:
            raise LedgerStateError(f"Pass component=...: the ledger has {len(names)} DP-SGD components {names}.")
        return names[0]

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise LedgerStateError(f"Component names must be non-empty strings, got {name!r}.")
        if name in self._components:
            raise LedgerStateError(f"Component {name!r} is already registered.")

    def _check_committed_delta(self, *, extra_delta: float, what: str) -> None:
        if self.dataset_size is None:
            return
        committed = sum(self.delta if c.mechanism == "dp-sgd" else sum(r.delta for r in c.releases) for c in self._components.values())
        if committed + extra_delta >= 1.0 / self.dataset_size:
            raise InvalidPrivacyParameterError(
                f"Adding the {what} brings the total delta to {committed + extra_delta:g}, not below 1/N = "
                f"{1.0 / self.dataset_size:g} for N={self.dataset_size}. Use a smaller delta per component."
            )

    def _cached_epsilon(self, history: list) -> float:
        key = (self.accountant_name, self.delta, tuple(tuple(entry) for entry in history))
        if key in self._epsilon_cache:
            self._epsilon_cache.move_to_end(key)
            return self._epsilon_cache[key]
        epsilon = _epsilon_from_history(list(history), delta=self.delta, accountant=self.accountant_name)
        self._epsilon_cache[key] = epsilon
        if len(self._epsilon_cache) > _EPSILON_CACHE_SIZE:
            self._epsilon_cache.popitem(last=False)
        return epsilon


def _append_steps(history: list, noise_multiplier: float, sample_rate: float, steps: int) -> list[HistoryEntry]:
    """Return a copy of ``history`` with ``steps`` more steps, merged as opacus' ``step`` merges them."""
    history = [tuple(entry) for entry in copy.deepcopy(history)]
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        last_sigma, last_q, last_steps = history.pop()
        history.append((last_sigma, last_q, last_steps + steps))
    else:
        history.append((noise_multiplier, sample_rate, steps))
    return history


def _check_state_header(state: Any) -> None:
    if not isinstance(state, dict):
        raise LedgerStateError(f"Ledger state must be a dict from PrivacyLedger.state_dict(), got {type(state).__name__}.")
    if state.get("format") != LEDGER_FORMAT or state.get("version") != LEDGER_VERSION:
        raise LedgerStateError(
            f"Not a ledger state of format {LEDGER_FORMAT!r} version {LEDGER_VERSION}: "
            f"got format={state.get('format')!r}, version={state.get('version')!r}."
        )
    missing = [key for key in ("delta", "accountant", "dataset_size", "components") if key not in state]
    if missing:
        raise LedgerStateError(f"Ledger state is missing the key(s) {missing}.")


def _component_from_state(entry: dict[str, Any], *, accountant_name: str) -> _Component:
    try:
        name, mechanism, note = entry["name"], entry["mechanism"], entry.get("note", "")
        if mechanism == "dp-sgd":
            if entry["accountant"] != accountant_name:
                raise LedgerStateError(f"Component {name!r} was accounted with {entry['accountant']!r}, the ledger uses {accountant_name!r}.")
            history = []
            for sigma, q, steps in entry["history"]:
                history.append((_validate_noise_multiplier(sigma), validate_sample_rate(q), _validate_steps(steps)))
            accountant = create_accountant(mechanism=accountant_name)
            accountant.history = history
            return _Component(name=name, mechanism=mechanism, note=note, accountant=accountant)
        if mechanism == "gaussian":
            releases = [_GaussianRelease(**release) for release in entry["releases"]]
            return _Component(name=name, mechanism=mechanism, note=note, releases=releases)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, LedgerStateError):
            raise
        raise LedgerStateError(f"Malformed ledger component {entry!r}: {error}") from error
    raise LedgerStateError(f"Unknown mechanism {mechanism!r} of component {name!r}; expected 'dp-sgd' or 'gaussian'.")
