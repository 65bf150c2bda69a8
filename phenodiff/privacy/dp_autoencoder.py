"""DP-SGD training of the AutoencoderKL on private images.

The autoencoder reads every private image, so a release is differentially private only when it is trained
on public data or with DP-SGD. This module does the latter with its own share of the target epsilon
(``privacy.autoencoder_epsilon``); the diffusion stage then gets the rest of the target, and the ledger
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

logger = logging.getLogger(__name__)

DP_COMPONENT = "autoencoder"
PRIVACY_FILE = "privacy.json"


def train_autoencoder_dp(*, model: torch.nn.Module, dataset, privacy, stage, checkpoint_dir: Path, seed: int,
                         resume: bool, loss_weights: dict[str, float]) -> DPTrainingResult:
    """Train ``model`` (:class:`~phenodiff.training.autoencoder.AutoencoderForTraining`) with DP-SGD.

    The per-example loss is L1 reconstruction + ``gradient`` x the image-gradient term + ``kl`` x the KL
    term, each a mean over the example's pixels, so the batch loss is a mean of per-example losses as
    opacus' ``loss_reduction="mean"`` expects. The epsilon budget is ``privacy.autoencoder_epsilon``.
    """
    from ..training.autoencoder import image_gradient_loss

    # The autoencoder's budget is its share; the continuous audit applies to the denoiser only.
    capped = dataclasses.replace(privacy, target_epsilon=float(privacy.autoencoder_epsilon), audit_steps=0)

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


def write_autoencoder_privacy(folder: Path, result: DPTrainingResult) -> Path:
    """Write the autoencoder's ledger, so the diffusion stage composes its own epsilon with it."""
    return atomic_write_json(folder / PRIVACY_FILE, {"epsilon": result.epsilon, "delta": result.delta,
                                                      "noise_multiplier": result.noise_multiplier, "sample_rate": result.sample_rate,
                                                      "steps": result.global_step, "stopped_early": result.stopped_early,
                                                      "ledger": result.ledger_state})


def load_autoencoder_ledger(folder: Path) -> PrivacyLedger | None:
    """Return the ledger the DP autoencoder stage wrote into ``folder``, or None when it was not trained with DP."""
    import json

    path = Path(folder) / PRIVACY_FILE
    if not path.is_file():
        return None
    return PrivacyLedger.from_state_dict(json.loads(path.read_text(encoding="utf-8"))["ledger"])
