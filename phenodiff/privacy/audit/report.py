"""The memorisation audit report: copy rate, privacy risk index and membership-inference AUC, overall and per group.

:func:`audit_memorisation` takes embeddings that were already computed (see
:mod:`phenodiff.privacy.audit.embeddings`) and per-image membership scores, so the same code serves the
continuous audit during training and the final audit before release.

Per demographic group g:

- copy rate: flagged fraction of the synthetic images generated for group g (needs ``synthetic_groups``);
- privacy risk index: max over training images i in group g of Pr(a generated image is a copy of i),
  over all M generated images, with a bound simultaneous over the group's training images;
- membership-inference AUC: members and non-members of group g only (needs ``member_groups`` and
  ``nonmember_groups``).

A group with fewer than ``min_group_size`` images in any set it is measured on is marked
``small_group`` and a warning names the set. Its numbers are still reported but are too noisy to rank
groups by.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ...utils.io import atomic_write_json
from ..errors import AuditInputError
from .copies import CopyFlags, CopyThreshold, flag_copies
from .risk import PrivacyRiskIndex, membership_inference_auc, privacy_risk_index
from .search import DEFAULT_BLOCK_BYTES, as_embedding_matrix

logger = logging.getLogger(__name__)

# The default of the data layer's phenotype schemas (groups.min_group_size).
DEFAULT_MIN_GROUP_SIZE = 20


@dataclass
class GroupAudit:
    """Audit numbers of one demographic group; None where the inputs for a number were not given.

    Attributes:
        group: Group label (as a string).
        n_train: Training images in the group.
        n_synthetic: Synthetic images generated for the group.
        copies: Flagged synthetic images among those generated for the group.
        copy_rate: copies / n_synthetic.
        privacy_risk: PI over the group's training images (see :class:`PrivacyRiskIndex`).
        n_members: Member scores in the group.
        n_nonmembers: Non-member scores in the group.
        mia_auc: Membership-inference AUC within the group (None when either side is empty).
        small_group: True when a set the group is measured on has fewer than ``min_group_size`` images.
        small_sets: Names of those sets.
    """

    group: str
    n_train: int
    n_synthetic: int | None = None
    copies: int | None = None
    copy_rate: float | None = None
    privacy_risk: PrivacyRiskIndex | None = None
    n_members: int | None = None
    n_nonmembers: int | None = None
    mia_auc: float | None = None
    small_group: bool = False
    small_sets: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    """Result of :func:`audit_memorisation`; JSON-serialisable with :meth:`to_dict`.

    Attributes:
        threshold: The copy threshold (method, value, calibration) that defined a copy.
        n_train: N, training images.
        n_synthetic: M, synthetic images audited.
        copies: Flagged synthetic images.
        copy_rate: copies / M.
        privacy_risk: PI estimate and upper bound over all training images.
        mia_auc: Membership-inference AUC, or None without scores.
        n_members: Member scores given.
        n_nonmembers: Non-member scores given.
        min_group_size: Size below which a group is marked small.
        groups: Per-group numbers, keyed by group label.
        warnings: Messages about conditions that weaken the numbers (uncertifiable M, small groups).
        step: Training step of a continuous audit, if given.
    """

    threshold: CopyThreshold
    n_train: int
    n_synthetic: int
    copies: int
    copy_rate: float
    privacy_risk: PrivacyRiskIndex
    mia_auc: float | None = None
    n_members: int | None = None
    n_nonmembers: int | None = None
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    groups: dict[str, GroupAudit] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write the report atomically to ``path`` (a reader never sees a partial file)."""
        return atomic_write_json(path, self.to_dict())


def _labels(values: Sequence[Hashable] | np.ndarray | None, size: int, *, name: str) -> np.ndarray | None:
    if values is None:
        return None
    labels = np.asarray(values)
    if labels.shape != (size,):
        raise AuditInputError(f"{name} must have one label per image, shape ({size},), got {labels.shape}.")
    return labels.astype(str)


def _scores(values: np.ndarray | None) -> np.ndarray | None:
    if values is None:
        return None
    return np.asarray(values, dtype=np.float64).ravel()


def audit_memorisation(
    *,
    train_embeddings: torch.Tensor | np.ndarray,
    synthetic_embeddings: torch.Tensor | np.ndarray,
    threshold: CopyThreshold,
    confidence: float = 0.95,
    delta_pi: float | None = None,
    member_scores: np.ndarray | None = None,
    nonmember_scores: np.ndarray | None = None,
    lower_is_member: bool = True,
    train_groups: Sequence[Hashable] | np.ndarray | None = None,
    synthetic_groups: Sequence[Hashable] | np.ndarray | None = None,
    member_groups: Sequence[Hashable] | np.ndarray | None = None,
    nonmember_groups: Sequence[Hashable] | np.ndarray | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    step: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> AuditReport:
    """Run the memorisation audit on precomputed embeddings and membership scores.

    Args:
        train_embeddings: (N, d) embeddings of the training images.
        synthetic_embeddings: (M, d) embeddings of generated images, same embedding.
        threshold: Copy threshold from :func:`~phenodiff.privacy.audit.copies.calibrate_copy_threshold`
            (computed on held-out real images in the same embedding).
        confidence: Confidence level of the PI upper bounds.
        delta_pi: Threshold of the constraint PI < delta_pi; adds ``certified`` and the smallest M that
            could certify it, and a warning when M is below that.
        member_scores: (n1,) per-image scores of training images, e.g. diffusion loss.
        nonmember_scores: (n0,) the same score on held-out real images.
        lower_is_member: Whether a lower score suggests a member (True for losses).
        train_groups: (N,) group label of each training image.
        synthetic_groups: (M,) group each synthetic image was generated for.
        member_groups: (n1,) group of each member score.
        nonmember_groups: (n0,) group of each non-member score.
        min_group_size: Groups with fewer images than this in a set are marked small.
        step: Training step, recorded for a continuous audit.
        block_bytes: Memory bound of the nearest-neighbour search.
    """
    train = as_embedding_matrix(train_embeddings, name="train_embeddings")
    synthetic = as_embedding_matrix(synthetic_embeddings, name="synthetic_embeddings")
    if synthetic.shape[0] == 0:
        raise AuditInputError("synthetic_embeddings is empty; generate images before auditing.")
    if (member_scores is None) != (nonmember_scores is None):
        raise AuditInputError("Pass both member_scores and nonmember_scores, or neither.")
    n_train, n_synthetic = train.shape[0], synthetic.shape[0]
    train_labels = _labels(train_groups, n_train, name="train_groups")
    synthetic_labels = _labels(synthetic_groups, n_synthetic, name="synthetic_groups")
    members = _scores(member_scores)
    nonmembers = _scores(nonmember_scores)
    member_labels = None if members is None else _labels(member_groups, members.size, name="member_groups")
    nonmember_labels = None if nonmembers is None else _labels(nonmember_groups, nonmembers.size, name="nonmember_groups")
    if (member_labels is None) != (nonmember_labels is None):
        raise AuditInputError("Pass both member_groups and nonmember_groups, or neither.")

    # 1. Copy flags and the overall numbers.
    flags = flag_copies(synthetic, train_embeddings=train, threshold=threshold, block_bytes=block_bytes)
    counts = flags.copy_counts(n_train)
    risk = privacy_risk_index(counts, n_generated=n_synthetic, confidence=confidence, delta_pi=delta_pi)
    mia = None
    if members is not None:
        mia = membership_inference_auc(member_scores=members, nonmember_scores=nonmembers, lower_is_member=lower_is_member)

    report = AuditReport(
        threshold=threshold,
        n_train=n_train,
        n_synthetic=n_synthetic,
        copies=int(flags.flagged.sum()),
        copy_rate=flags.copy_rate,
        privacy_risk=risk,
        mia_auc=mia,
        n_members=None if members is None else int(members.size),
        n_nonmembers=None if nonmembers is None else int(nonmembers.size),
        min_group_size=min_group_size,
        step=step,
    )
    if delta_pi is not None and n_synthetic < risk.minimum_generated:
        report.warnings.append(
            f"{n_synthetic} generated images cannot certify PI < {delta_pi:g} at {confidence:.0%} confidence even with zero copies; "
            f"generate at least {risk.minimum_generated} for the audit."
        )

    # 2. Per-group numbers.
    if train_labels is not None:
        report.groups = _group_audits(
            flags=flags, counts=counts, train_labels=train_labels, synthetic_labels=synthetic_labels,
            members=members, nonmembers=nonmembers, member_labels=member_labels, nonmember_labels=nonmember_labels,
            n_synthetic=n_synthetic, confidence=confidence, delta_pi=delta_pi, min_group_size=min_group_size,
            lower_is_member=lower_is_member,
        )
        for audit in report.groups.values():
            if audit.small_group:
                report.warnings.append(
                    f"Group {audit.group!r} has fewer than {min_group_size} images in: {', '.join(audit.small_sets)}; "
                    "its numbers are too noisy to compare groups by."
                )
    elif synthetic_labels is not None or member_labels is not None:
        raise AuditInputError("Per-group numbers need train_groups as well; pass the group label of every training image.")

    for message in report.warnings:
        logger.warning(message)
    return report


def _group_audits(
    *,
    flags: CopyFlags,
    counts: np.ndarray,
    train_labels: np.ndarray,
    synthetic_labels: np.ndarray | None,
    members: np.ndarray | None,
    nonmembers: np.ndarray | None,
    member_labels: np.ndarray | None,
    nonmember_labels: np.ndarray | None,
    n_synthetic: int,
    confidence: float,
    delta_pi: float | None,
    min_group_size: int,
    lower_is_member: bool,
) -> dict[str, GroupAudit]:
    names = set(train_labels.tolist())
    for labels in (synthetic_labels, member_labels, nonmember_labels):
        if labels is not None:
            names |= set(labels.tolist())
    audits = {}
    for group in sorted(names):
        in_train = train_labels == group
        audit = GroupAudit(group=group, n_train=int(in_train.sum()))
        sizes = {"training images": audit.n_train}
        if audit.n_train:
            audit.privacy_risk = privacy_risk_index(counts[in_train], n_generated=n_synthetic, confidence=confidence, delta_pi=delta_pi)
        if synthetic_labels is not None:
            in_synthetic = synthetic_labels == group
            audit.n_synthetic = int(in_synthetic.sum())
            audit.copies = int(flags.flagged[in_synthetic].sum())
            audit.copy_rate = audit.copies / audit.n_synthetic if audit.n_synthetic else None
            sizes["synthetic images"] = audit.n_synthetic
        if member_labels is not None:
            group_members = members[member_labels == group]
            group_nonmembers = nonmembers[nonmember_labels == group]
            audit.n_members, audit.n_nonmembers = int(group_members.size), int(group_nonmembers.size)
            if group_members.size and group_nonmembers.size:
                audit.mia_auc = membership_inference_auc(
                    member_scores=group_members, nonmember_scores=group_nonmembers, lower_is_member=lower_is_member
                )
            sizes["member scores"] = audit.n_members
            sizes["non-member scores"] = audit.n_nonmembers
        audit.small_sets = [f"{name} ({size})" for name, size in sizes.items() if size < min_group_size]
        audit.small_group = bool(audit.small_sets)
        audits[group] = audit
    return audits
