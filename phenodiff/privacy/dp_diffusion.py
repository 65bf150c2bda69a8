"""DP-SGD training of the conditional denoiser (phenotype encoder + UNet) with opacus.

The loop is :func:`phenodiff.privacy.dp_sgd.train_dp_sgd`. This module adds noise multiplicity
(Dockhorn et al., 2022): every Poisson-sampled example is repeated K times with fresh latent, noise and
timestep draws, and its K per-sample gradients are averaged before clipping, so the sensitivity stays C
while the gradient variance drops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .accounting import PrivacyLedger
from .dp_sgd import DPTrainingResult, load_dp_checkpoint, save_dp_checkpoint, train_dp_sgd

logger = logging.getLogger(__name__)

DP_COMPONENT = "unet+phenotype_encoder"
TRAINABLE_CHOICES = ("all", "attention_and_conditioning")

__all__ = ["DP_COMPONENT", "DPTrainingResult", "load_dp_checkpoint", "save_dp_checkpoint", "select_trainable", "train_denoiser_dp"]


def select_trainable(denoiser: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    """Freeze all but the chosen parameters and return the trainable ones.

    ``attention_and_conditioning`` keeps the UNet's attention blocks and the whole phenotype encoder
    trainable, as DP-LDM fine-tunes only attention and conditioning after non-private pretraining
    (Lyu et al., 2023).
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {list(TRAINABLE_CHOICES)}, got {trainable!r}.")
    for name, parameter in denoiser.named_parameters():
        keep = trainable == "all" or name.startswith("phenotype_encoder.") or ".attentions." in name
        parameter.requires_grad_(keep)
    return [p for p in denoiser.parameters() if p.requires_grad]


def average_multiplicity_grad_samples(parameters: list[torch.nn.Parameter], multiplicity: int) -> None:
    """Replace each (B*K, ...) per-sample gradient by the mean over the K copies of each example, (B, ...)."""
    for parameter in parameters:
        grad_sample = parameter.grad_sample
        if grad_sample is None:
            continue
        batch = grad_sample.shape[0] // multiplicity
        parameter.grad_sample = grad_sample.reshape(batch, multiplicity, *grad_sample.shape[1:]).mean(dim=1)


def train_denoiser_dp(
    *,
    denoiser: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    noise_scheduler,
    scaling: float,
    privacy,
    stage,
    checkpoint_dir: Path,
    seed: int,
    resume: bool,
    ledger: PrivacyLedger | None = None,
    after_step: Callable[[int], None] | None = None,
    audit: Callable[[int, float], object] | None = None,
    shift: Callable[..., torch.Tensor] | None = None,
    shift_weight: float = 0.0,
) -> DPTrainingResult:
    """Train ``denoiser`` with DP-SGD on ``dataset`` (a latent dataset with phenotypes).

    Args:
        denoiser: :class:`~phenodiff.training.models.ConditionalDenoiser`.
        dataset: Items with ``latent_mean``, ``latent_std``, ``age``, ``sex``, ``pathology``.
        noise_scheduler: The DDPM training scheduler.
        scaling: The autoencoder's latent scaling factor.
        privacy: :class:`~phenodiff.training.config.PrivacyConfig`.
        stage: :class:`~phenodiff.training.config.DiffusionConfig` (batch size, steps, learning rate).
        checkpoint_dir: Where ``checkpoint-<step>`` folders are written and resumed from.
        seed: Seeds Poisson sampling and the noise draws.
        resume: Continue from the latest checkpoint (its ledger continues epsilon, never from zero).
        ledger: The DP autoencoder's ledger when it has one; the denoiser gets the rest of the target.
        after_step: Called with the step number after each optimizer step (EMA, validation).
        audit: The continuous memorisation audit, see :func:`~phenodiff.privacy.dp_sgd.train_dp_sgd`.
        shift: Per-row L_shift terms, called as ``shift(noisy, prediction, timesteps, groups)``; each row's term
            must depend on that row alone (see :class:`~phenodiff.training.dp_shift.DPShiftLoss`).
        shift_weight: lambda_s; the loss is the mean over rows of the denoising loss + lambda_s x the term.

    Raises:
        UnreachablePrivacyTargetError: the target epsilon cannot be met with this data and schedule.
    """
    multiplicity = int(privacy.noise_multiplicity)
    if multiplicity < 1:
        raise ValueError(f"noise_multiplicity must be >= 1, got {multiplicity}.")
    params = select_trainable(denoiser, privacy.trainable)

    def backward(model, batch):
        def repeat(tensor):
            return tensor.repeat_interleave(multiplicity, dim=0)

        mean, std = repeat(batch["latent_mean"]), repeat(batch["latent_std"])
        latent = (mean + std * torch.randn_like(std)) * scaling
        noise = torch.randn_like(latent)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latent.shape[0],), device=latent.device)
        noisy = noise_scheduler.add_noise(latent, noise, timesteps)
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latent, noise, timesteps)
        extras = {key[len("extra_"):]: repeat(value) for key, value in batch.items() if key.startswith("extra_")}
        prediction = model(noisy, timesteps, repeat(batch["age"]), repeat(batch["sex"]), repeat(batch["pathology"]), extras=extras)
        loss = F.mse_loss(prediction, target)
        if shift is not None and shift_weight > 0:
            loss = loss + shift_weight * shift(noisy, prediction, timesteps, repeat(batch["group"])).mean()
        loss.backward()
        average_multiplicity_grad_samples(params, multiplicity)
        return loss

    return train_dp_sgd(
        module=denoiser, params=params, dataset=dataset, backward=backward, component=DP_COMPONENT,
        note=f"DP-SGD, C={privacy.max_grad_norm}, K={multiplicity}, trainable={privacy.trainable}", privacy=privacy, stage=stage,
        checkpoint_dir=checkpoint_dir, seed=seed, resume=resume, ledger=ledger, after_step=after_step, audit=audit,
        description="Diffusion (DP)",
    )
