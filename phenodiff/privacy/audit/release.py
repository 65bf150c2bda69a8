"""The release filter: generated images flagged as copies are rejected, counted and never written out."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Sequence, TypeVar

import numpy as np
import torch

from ..errors import AuditInputError
from .copies import CopyThreshold, flag_copies
from .search import DEFAULT_BLOCK_BYTES

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


@dataclass
class ReleaseDecision:
    """Keep mask and counts of the release filter over M generated images.

    Attributes:
        keep: (M,) bool, True for images that may be released.
        n_total: M, images screened.
        n_rejected: Images flagged as copies and withheld.
        n_kept: Images that may be released.
        threshold: The copy threshold used.
        rejected_by_group: Rejected images per group, when groups were given.
    """

    keep: np.ndarray
    n_total: int
    n_rejected: int
    n_kept: int
    threshold: CopyThreshold
    rejected_by_group: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the counts and the threshold as JSON types, without the per-image mask."""
        data = asdict(self)
        data.pop("keep")
        return data


def release_filter(
    synthetic_embeddings: torch.Tensor | np.ndarray,
    *,
    train_embeddings: torch.Tensor | np.ndarray,
    threshold: CopyThreshold,
    synthetic_groups: Sequence[Hashable] | np.ndarray | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> ReleaseDecision:
    """Screen generated images against the training set and return the keep mask and the counts.

    Args:
        synthetic_embeddings: (M, d) embeddings of the generated images, in the threshold's embedding.
        train_embeddings: (N, d) embeddings of the training images.
        threshold: Copy threshold, normally calibrated on held-out real images.
        synthetic_groups: (M,) group each image was generated for, to count rejections per group.
        block_bytes: Memory bound of the nearest-neighbour search.

    Write the images out through :func:`released` so that rejected ones cannot slip through.
    """
    flags = flag_copies(synthetic_embeddings, train_embeddings=train_embeddings, threshold=threshold, block_bytes=block_bytes)
    keep = ~flags.flagged
    decision = ReleaseDecision(
        keep=keep,
        n_total=int(keep.size),
        n_rejected=int(flags.flagged.sum()),
        n_kept=int(keep.sum()),
        threshold=threshold,
    )
    if synthetic_groups is not None:
        labels = np.asarray(synthetic_groups).astype(str)
        if labels.shape != keep.shape:
            raise AuditInputError(f"synthetic_groups must have one label per image, shape {keep.shape}, got {labels.shape}.")
        decision.rejected_by_group = {group: int(flags.flagged[labels == group].sum()) for group in sorted(set(labels.tolist()))}
    if decision.n_rejected:
        logger.warning(
            "Release filter rejected %d of %d generated images as copies of training images (%s threshold %.4g).",
            decision.n_rejected, decision.n_total, threshold.method, threshold.value,
        )
    return decision


def released(items: Sequence[Item], decision: ReleaseDecision) -> list[Item]:
    """Return the items that ``decision`` keeps, in order.

    ``items`` are the generated images (or their file records) in the order they were screened. For a
    tensor or array of images, ``images[decision.keep]`` does the same.

    Raises:
        AuditInputError: the number of items differs from the number screened, checked before any
            item is returned.
    """
    if len(items) != decision.n_total:
        raise AuditInputError(f"Got {len(items)} items but {decision.n_total} were screened; pass the screened images, in order.")
    return [item for item, keep in zip(items, decision.keep) if keep]


@dataclass
class CopyFilter:
    """The release filter as a pipeline needs it: training embeddings, a copy threshold and the embedding.

    Pass it to ``PhenoDiffPipeline(..., copy_filter=...)``: generated images flagged as copies are removed
    from the output and only counted.

    Attributes:
        train_embeddings: (N, d) embeddings of the training images.
        threshold: Copy threshold in the same embedding.
        embedding: Maps (M, C, H, W) images in [0, 1] to (M, d) embeddings.
    """

    train_embeddings: torch.Tensor
    threshold: CopyThreshold
    embedding: Any

    @classmethod
    def from_images(cls, train_images: torch.Tensor, heldout_images: torch.Tensor, *, embedding: Any = None,
                    false_flag_rate: float = 0.01) -> "CopyFilter":
        """Embed (N, C, H, W) training and held-out images in [0, 1] and calibrate the threshold on the held-out ones."""
        from .copies import calibrate_copy_threshold
        from .embeddings import PixelEmbedding

        embedding = embedding or PixelEmbedding()
        train = embedding(train_images)
        threshold = calibrate_copy_threshold(train_embeddings=train, heldout_embeddings=embedding(heldout_images),
                                             false_flag_rate=false_flag_rate,
                                             embedding=embedding.describe() if hasattr(embedding, "describe") else None)
        return cls(train_embeddings=train, threshold=threshold, embedding=embedding)

    def __call__(self, images: torch.Tensor, *, groups: Sequence[Hashable] | None = None) -> ReleaseDecision:
        """Screen (M, C, H, W) images in [0, 1]; return the keep mask and counts."""
        return release_filter(self.embedding(images), train_embeddings=self.train_embeddings, threshold=self.threshold,
                              synthetic_groups=groups)
