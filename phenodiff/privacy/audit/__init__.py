"""The memorisation audit: are synthetic images copies of training images, and how likely is that per image?

Typical use::

    embed = PixelEmbedding()                      # or FeatureEmbedding(...), train_contrastive_encoder(...)
    train, heldout, synthetic = embed(train_images), embed(heldout_images), embed(synthetic_images)
    threshold = calibrate_copy_threshold(train_embeddings=train, heldout_embeddings=heldout, false_flag_rate=0.01,
                                         embedding=embed.describe())
    report = audit_memorisation(train_embeddings=train, synthetic_embeddings=synthetic, threshold=threshold,
                                delta_pi=1e-3, train_groups=..., synthetic_groups=...)
    report.write_json("audit.json")
    decision = release_filter(synthetic, train_embeddings=train, threshold=threshold)
"""

from .controller import AuditController, ControllerAction
from .copies import CopyFlags, CopyThreshold, calibrate_copy_threshold, copy_scores, fixed_ratio_threshold, flag_copies
from .embeddings import (
    ContrastiveEmbedding,
    ContrastiveEncoderConfig,
    Embedding,
    FeatureEmbedding,
    PixelEmbedding,
    train_contrastive_encoder,
)
from .release import CopyFilter, ReleaseDecision, release_filter, released
from .report import AuditReport, GroupAudit, audit_memorisation
from .risk import (
    PrivacyRiskIndex,
    clopper_pearson_upper,
    membership_inference_auc,
    minimum_generated_images,
    privacy_risk_index,
    zero_copy_bound,
)
from .search import NeighborResult, nearest_neighbors

__all__ = [
    "AuditController",
    "AuditReport",
    "ContrastiveEmbedding",
    "CopyFilter",
    "ContrastiveEncoderConfig",
    "ControllerAction",
    "CopyFlags",
    "CopyThreshold",
    "Embedding",
    "FeatureEmbedding",
    "GroupAudit",
    "NeighborResult",
    "PixelEmbedding",
    "PrivacyRiskIndex",
    "ReleaseDecision",
    "audit_memorisation",
    "calibrate_copy_threshold",
    "clopper_pearson_upper",
    "copy_scores",
    "fixed_ratio_threshold",
    "flag_copies",
    "membership_inference_auc",
    "minimum_generated_images",
    "nearest_neighbors",
    "privacy_risk_index",
    "release_filter",
    "released",
    "train_contrastive_encoder",
    "zero_copy_bound",
]
