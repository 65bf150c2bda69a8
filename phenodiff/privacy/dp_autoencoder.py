"""DP-SGD training of the AutoencoderKL on private images.

The autoencoder reads every private image, so a release is differentially private only when it is trained
on public data or with DP-SGD. This module does the latter with its own share of the target epsilon
(``privacy.autoencoder_epsilon``). The diffusion stage then gets the rest of the target, and the ledger
composes both.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils.io import atomic_write_json
from .accounting import PrivacyLedger
from .dp_sgd import DPTrainingResult, train_dp_sgd
from .errors import UnreachablePrivacyTargetError

logger = logging.getLogger(__name__)

DP_COMPONENT = "autoencoder"
PRIVACY_FILE = "privacy.json"
# The latent scaling factor is released with this much of the autoencoder's epsilon share. Each image's
# mean squared latent is clipped to SCALE_CLIP; the released variance is floored at SCALE_FLOOR.
SCALE_EPSILON = 0.25
SCALE_CLIP = 4.0
SCALE_FLOOR = 1e-4


def train_autoencoder_dp(*, model: torch.nn.Module, dataset, privacy, stage, checkpoint_dir: Path, seed: int,
                         resume: bool, loss_weights: dict[str, float]) -> DPTrainingResult:
    """Train ``model`` (:class:`~phenodiff.training.autoencoder.AutoencoderForTraining`) with DP-SGD.

    The per-example loss is L1 reconstruction + ``gradient`` x the image-gradient term + ``kl`` x the KL
    term, each a mean over the example's pixels, so the batch loss is a mean of per-example losses as
    opacus' ``loss_reduction="mean"`` expects. The epsilon budget is ``privacy.autoencoder_epsilon``.
    """
    from ..training.autoencoder import image_gradient_loss

    share = float(privacy.autoencoder_epsilon)
    if share <= SCALE_EPSILON:
        raise UnreachablePrivacyTargetError(
            f"privacy.autoencoder_epsilon {share:g} leaves nothing for DP-SGD after the latent scale release "
            f"(epsilon {SCALE_EPSILON}); give the autoencoder a share above {SCALE_EPSILON}."
        )
    # DP-SGD gets the share minus the latent scale release; the continuous audit applies to the denoiser only.
    capped = dataclasses.replace(privacy, target_epsilon=share - SCALE_EPSILON, audit_steps=0)

    def backward(grad_model, batch):
        pixels = batch["pixel_values"]
        reconstruction, kl = grad_model(pixels)
        loss = (F.l1_loss(reconstruction, pixels) + loss_weights["gradient"] * image_gradient_loss(reconstruction, pixels)
                + loss_weights["kl"] * kl.mean() / pixels[0].numel())
        loss.backward()
        return loss

    return train_dp_sgd(
        module=model, params=[p for p in model.parameters() if p.requires_grad], dataset=dataset, backward=backward,
        component=DP_COMPONENT, note=f"DP-SGD, C={privacy.max_grad_norm}", privacy=capped, stage=stage,
        checkpoint_dir=checkpoint_dir, seed=seed, resume=resume, description="Autoencoder (DP)",
    )


@torch.no_grad()
def release_latent_scale(vae, dataset, result: DPTrainingResult, *, batch_size: int = 128) -> tuple[float, PrivacyLedger]:
    """Release the latent scaling factor 1 / std of the training latents with the Gaussian mechanism.

    Each image contributes the mean square of its latent mean, clipped to ``SCALE_CLIP``, so one image
    moves the sum by at most that much. The noisy mean over the public training-set size gives the
    variance, and the factor is its inverse square root. The release is composed into the autoencoder's
    ledger. Returns the factor and the updated ledger.
    """
    from .gaussian_mechanism import release_mean

    squares = []
    for start in range(0, len(dataset), batch_size):
        pixels = dataset.pixel_values[start : start + batch_size].to(vae.device)
        squares.append(vae.encode(pixels).latent_dist.mean.float().pow(2).flatten(1).mean(1, keepdim=True).cpu())
    ledger = PrivacyLedger.from_state_dict(result.ledger_state)
    # The noise generator is seeded by the operating system, never by the published config seed.
    release = release_mean(torch.cat(squares), clip_norm=SCALE_CLIP, epsilon=SCALE_EPSILON, delta=ledger.delta,
                           public_count=len(dataset), ledger=ledger, name="latent_scale")
    variance = max(float(release.values["all"][0]), SCALE_FLOOR)
    return variance ** -0.5, ledger


def write_autoencoder_privacy(folder: Path, result: DPTrainingResult, ledger: PrivacyLedger) -> Path:
    """Write the autoencoder's ledger, so the diffusion stage composes its own epsilon with it."""
    return atomic_write_json(folder / PRIVACY_FILE, {"epsilon": ledger.total_epsilon(), "delta": result.delta,
                                                      "noise_multiplier": result.noise_multiplier, "sample_rate": result.sample_rate,
                                                      "steps": result.global_step, "stopped_early": result.stopped_early,
                                                      "ledger": ledger.state_dict()})


def load_autoencoder_ledger(folder: Path) -> PrivacyLedger | None:
    """Return the ledger the DP autoencoder stage wrote into ``folder``, or None when it was not trained with DP."""
    import json

    path = Path(folder) / PRIVACY_FILE
    if not path.is_file():
        return None
    return PrivacyLedger.from_state_dict(json.loads(path.read_text(encoding="utf-8"))["ledger"])
