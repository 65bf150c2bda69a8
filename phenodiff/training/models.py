"""Builders for the generator's networks from a training configuration."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from ..data.schema import PhenotypeSchema
from ..models.phenotype_encoder import PhenotypeEncoder
from .config import AutoencoderConfig, DiffusionConfig


def build_vae(config: AutoencoderConfig, *, channels: int, resolution: int) -> AutoencoderKL:
    """Build an AutoencoderKL that downsamples by ``2 ** (len(block_out_channels) - 1)``."""
    depth = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=resolution,
    )


def build_unet(config: DiffusionConfig, *, latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    """Build a UNet2DConditionModel with cross-attention in every block but the deepest down and first up block."""
    depth = len(config.block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )


def build_encoder(config: DiffusionConfig, schema: PhenotypeSchema) -> PhenotypeEncoder:
    return PhenotypeEncoder(
        pathology_vocabulary=list(schema.pathology.vocabulary),
        multi_label=schema.pathology.multi_label,
        cross_attention_dim=config.cross_attention_dim,
        age_min=schema.age.min,
        age_max=schema.age.max,
        attribute_dropout=config.attribute_dropout,
        extra_vocabularies=extra_vocabularies(schema),
    )


def extra_vocabularies(schema: PhenotypeSchema) -> dict[str, list[str]]:
    """Extra attributes the encoder embeds: those whose schema declares their values."""
    return {name: list(spec.values) for name, spec in schema.extras.items() if spec.values}


def batch_extras(batch, names) -> dict:
    """Collect the ``extra_<name>`` value indices of a batch into the encoder's ``extras`` mapping."""
    return {name: batch[f"extra_{name}"] for name in names if f"extra_{name}" in batch}


def build_noise_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )


class ConditionalDenoiser(nn.Module):
    """The trainable part of stage 2: phenotype encoder and UNet, called as one module.

    Keeping both in one module lets the optimizer, EMA, mixed precision and DP-SGD treat them together.
    """

    def __init__(self, unet: UNet2DConditionModel, phenotype_encoder: PhenotypeEncoder):
        super().__init__()
        self.unet = unet
        self.phenotype_encoder = phenotype_encoder

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        age: torch.Tensor,
        sex: torch.Tensor,
        pathology: torch.Tensor,
        conditioning_dropout: bool = True,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the UNet prediction (B, C, h, w) for noisy latents (B, C, h, w) at integer ``timesteps`` (B,).

        ``extras`` maps extra attribute names to (B,) value indices, -1 where missing.
        """
        tokens = self.phenotype_encoder(age=age, sex=sex, pathology=pathology, extras=extras,
                                        conditioning_dropout=conditioning_dropout)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=tokens).sample
