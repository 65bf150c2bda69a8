"""Audit a trained PhenoDiffPipeline against its training images and write the result into its model card."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ...data.dataset import PhenoDataset
from ...data.torch_dataset import PhenoTorchDataset
from .copies import calibrate_copy_threshold, flag_copies
from .embeddings import PixelEmbedding
from .report import AuditReport, audit_memorisation

logger = logging.getLogger(__name__)


@torch.no_grad()
def diffusion_loss_scores(pipeline, images: PhenoTorchDataset, *, num_timesteps: int = 10, batch_size: int = 64,
                          seed: int = 0) -> np.ndarray:
    """Mean denoising loss of each image over ``num_timesteps`` evenly spaced timesteps, with fixed noise.

    A loss-threshold membership-inference attack (Yeom et al., 2018) scores members lower than non-members
    when the model has memorised them. Each image is conditioned on its own phenotype.
    """
    unet, vae, encoder = pipeline.unet, pipeline.vae, pipeline.phenotype_encoder
    scheduler = pipeline.scheduler
    train_steps = scheduler.config.num_train_timesteps
    timesteps = torch.linspace(0, train_steps - 1, num_timesteps).long()
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for start in range(0, len(images), batch_size):
        pixels = images.pixel_values[start : start + batch_size] * 2.0 - 1.0
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        tokens = encoder(age=images.age[start : start + batch_size], sex=images.sex[start : start + batch_size],
                         pathology=images.pathology[start : start + batch_size])
        total = torch.zeros(latents.shape[0])
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator)
            alpha = alphas[t]
            noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
            prediction = unet(noisy, t.expand(latents.shape[0]), encoder_hidden_states=tokens).sample
            target = noise if scheduler.config.prediction_type == "epsilon" else alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
            total += ((prediction - target) ** 2).flatten(1).mean(1)
        scores.append(total / num_timesteps)
    return torch.cat(scores).numpy()


def audit_pipeline(
    pipeline,
    dataset: PhenoDataset,
    *,
    resolution: int,
    num_images: int = 1000,
    false_flag_rate: float = 0.01,
    delta_pi: float | None = 0.01,
    confidence: float = 0.95,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 50,
    seed: int = 0,
) -> tuple[AuditReport, np.ndarray]:
    """Generate ``num_images`` for training-split phenotypes and audit them for copies of training images.

    The embedding is the standardised pixel vector; the copy threshold is calibrated on the validation
    split (held-out real images) at ``false_flag_rate``. Membership inference compares the diffusion loss
    of training images with that of test images.

    Returns the report and the (M,) boolean copy flags of the generated images.
    """
    from ...evaluation.fidelity import generate_for_requests, requests_like_training

    requests, groups = requests_like_training(dataset, count=num_images, seed=seed)
    synthetic = generate_for_requests(pipeline, requests, batch_size=64, num_inference_steps=num_inference_steps,
                                      guidance_scale=guidance_scale, seed=seed)
    return audit_generated(pipeline, dataset, synthetic, groups, resolution=resolution, false_flag_rate=false_flag_rate,
                           delta_pi=delta_pi, confidence=confidence, seed=seed)


def audit_generated(
    pipeline,
    dataset: PhenoDataset,
    synthetic: torch.Tensor,
    synthetic_groups: list[str],
    *,
    resolution: int,
    false_flag_rate: float = 0.01,
    delta_pi: float | None = 0.01,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[AuditReport, np.ndarray]:
    """Audit images that ``pipeline`` already generated, (M, C, H, W) in [0, 1], for copies of training images.

    The copy threshold is calibrated on the validation split at ``false_flag_rate`` in the standardised
    pixel embedding. Membership inference compares the diffusion loss of training and test images.

    Returns the report and the (M,) boolean copy flags.
    """
    train = PhenoTorchDataset(dataset, "train", resolution=resolution, value_range="0,1", progress=False)
    val = PhenoTorchDataset(dataset, "val", resolution=resolution, value_range="0,1", progress=False)
    test = PhenoTorchDataset(dataset, "test", resolution=resolution, value_range="0,1", progress=False)
    embed = PixelEmbedding()
    train_embeddings, val_embeddings, synthetic_embeddings = embed(train.pixel_values), embed(val.pixel_values), embed(synthetic)
    threshold = calibrate_copy_threshold(train_embeddings=train_embeddings, heldout_embeddings=val_embeddings,
                                         false_flag_rate=false_flag_rate, embedding=embed.describe())
    members = diffusion_loss_scores(pipeline, train, seed=seed)
    nonmembers = diffusion_loss_scores(pipeline, test, seed=seed)
    records = dataset.records
    train_groups = list(records.loc[records["split"] == "train", "group"])
    report = audit_memorisation(
        train_embeddings=train_embeddings, synthetic_embeddings=synthetic_embeddings, threshold=threshold,
        confidence=confidence, delta_pi=delta_pi, member_scores=members, nonmember_scores=nonmembers,
        train_groups=train_groups, synthetic_groups=list(synthetic_groups), member_groups=train_groups,
        nonmember_groups=list(records.loc[records["split"] == "test", "group"]),
        min_group_size=dataset.schema.groups.min_group_size,
    )
    flags = flag_copies(synthetic_embeddings, train_embeddings=train_embeddings, threshold=threshold)
    return report, np.asarray(flags.flagged)


def audit_section(report: AuditReport) -> str:
    """Model card text for an audit report: copy rate, PI with its bound, MIA AUC and per-group rows."""
    risk = report.privacy_risk
    embedding = (report.threshold.embedding or {}).get("kind", "unnamed")
    verdict = "." if risk.delta_pi is None else f"; threshold {risk.delta_pi:g} {'met' if risk.certified else 'not certified'}."
    lines = [
        f"- Generated images audited: {report.n_synthetic}; training images: {report.n_train}.",
        f"- Copy rule: {report.threshold.method} threshold {report.threshold.value:.4g} in the {embedding} embedding "
        f"(false-flag rate {report.threshold.false_flag_rate}).",
        f"- Copy rate: {report.copy_rate:.4f} ({report.copies} flagged).",
        f"- Privacy risk index PI: estimate {risk.estimate:.4g}, {risk.confidence:.0%} upper bound {risk.upper:.4g}{verdict}",
    ]
    if report.mia_auc is not None:
        lines.append(f"- Membership-inference AUC (diffusion loss, training vs test images): {report.mia_auc:.3f}.")
    lines += ["", "| group | synthetic | copies | copy rate | PI bound | MIA AUC | small |", "|---|---|---|---|---|---|---|"]
    for name, group in report.groups.items():
        def number(value, spec):
            return "" if value is None else format(value, spec)

        upper = None if group.privacy_risk is None else group.privacy_risk.upper
        lines.append(
            f"| {name} | {number(group.n_synthetic, 'd')} | {number(group.copies, 'd')} | {number(group.copy_rate, '.4f')} | "
            f"{number(upper, '.4g')} | {number(group.mia_auc, '.3f')} | {'yes' if group.small_group else ''} |"
        )
    lines += [f"\nNote: {warning}" for warning in report.warnings]
    return "\n".join(lines)


def write_audit_into_card(card_path: str | Path, section: str) -> None:
    """Replace the body of the card's "Memorisation audit" section with ``section``."""
    from ...hub.model_card import replace_card_section

    replace_card_section(card_path, "Memorisation audit", section)


def make_training_audit(pipeline_factory, dataset: PhenoDataset, *, resolution: int, privacy, seed: int = 0):
    """Build the continuous audit that DP training calls every ``privacy.audit_steps`` steps.

    Each call generates ``privacy.audit_num_images`` images for training-split phenotypes with the current
    weights, flags copies against a threshold calibrated once on the validation split and estimates PI with
    its upper bound. It then lets an :class:`~.controller.AuditController` decide to continue, raise the noise
    multiplier or halt. ``pipeline_factory()`` returns a pipeline with the current weights.
    """
    from ...evaluation.fidelity import generate_for_requests, requests_like_training
    from .controller import AuditController
    from .release import CopyFilter
    from .risk import privacy_risk_index

    train = PhenoTorchDataset(dataset, "train", resolution=resolution, value_range="0,1", progress=False)
    val = PhenoTorchDataset(dataset, "val", resolution=resolution, value_range="0,1", progress=False)
    copy_filter = CopyFilter.from_images(train.pixel_values, val.pixel_values, false_flag_rate=privacy.audit_false_flag_rate)
    controller = AuditController(delta_pi=privacy.audit_delta_pi, policy=privacy.audit_policy)

    def audit(step: int, noise_multiplier: float):
        requests, _ = requests_like_training(dataset, count=privacy.audit_num_images, seed=seed + step)
        images = generate_for_requests(pipeline_factory(), requests, batch_size=64,
                                       num_inference_steps=privacy.audit_inference_steps, guidance_scale=1.0, seed=seed + step)
        flags = flag_copies(copy_filter.embedding(images), train_embeddings=copy_filter.train_embeddings,
                            threshold=copy_filter.threshold)
        counts = np.bincount(np.asarray(flags.nearest_index)[np.asarray(flags.flagged)], minlength=len(train))
        risk = privacy_risk_index(counts, n_generated=len(requests))
        action = controller.decide(pi_estimate=risk.estimate, pi_upper=risk.upper, noise_multiplier=noise_multiplier,
                                   n_generated=len(requests), step=step)
        logger.info("Audit at step %d: %d copies of %d, PI upper %.4g -> %s", step, int(counts.sum()), len(requests), risk.upper, action.kind)
        return action

    return audit
