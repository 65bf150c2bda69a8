"""Stage 1: train the AutoencoderKL whose latents the diffusion model is trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..utils.io import atomic_write_json
from .config import TrainConfig
from .data import prepare_dataset, torch_split
from .loop import finish_trackers, make_accelerator, run_loop
from .models import build_vae

logger = logging.getLogger(__name__)


class AutoencoderForTraining(torch.nn.Module):
    """Encode, sample and decode in one forward, so distributed training synchronises gradients."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the reconstruction (B, C, H, W) and the KL divergence per image (B,)."""
        posterior = self.vae.encode(pixels).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


def image_gradient_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance between horizontal and vertical finite differences: penalises blurred edges.

    A pretrained perceptual network (LPIPS) would need downloaded weights; edge features need none.
    """
    def grads(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ry, rx), (ty, tx) = grads(reconstruction), grads(target)
    return F.l1_loss(ry, ty) + F.l1_loss(rx, tx)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak range 2)."""
    mse = ((reconstruction - target) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(4.0 / mse)


@torch.no_grad()
def evaluate_autoencoder(vae: AutoencoderKL, dataset, batch_size: int = 128) -> dict[str, float]:
    """Mean PSNR of posterior-mean reconstructions and the latent standard deviation over ``dataset``."""
    vae.eval()
    scores, latents = [], []
    for start in range(0, len(dataset), batch_size):
        pixels = dataset.pixel_values[start : start + batch_size].to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
        scores.append(psnr(vae.decode(mean).sample.clamp(-1, 1), pixels))
        latents.append(mean.float())
    return {"psnr_db": float(torch.cat(scores).mean()), "latent_std": float(torch.cat(latents).std())}


def train_autoencoder(config: TrainConfig, *, resume_from_checkpoint: str | None = None) -> Path:
    """Train stage 1 and save the autoencoder to ``output_dir/autoencoder``; return that folder.

    The saved config's ``scaling_factor`` is 1 / std of the training latents, so scaled latents have unit
    variance as the diffusion noise schedule assumes (Rombach et al., 2022).
    """
    output_dir = Path(config.output_dir)
    stage_dir = output_dir / "autoencoder"
    ae = config.autoencoder
    accelerator = make_accelerator(stage_dir, gradient_accumulation_steps=ae.gradient_accumulation_steps,
                                   mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    with accelerator.main_process_first():
        dataset = prepare_dataset(config.data, output_dir)
    train = torch_split(dataset, "train", config.data.resolution)
    vae = build_vae(ae, channels=dataset.schema.channels, resolution=config.data.resolution)
    if accelerator.is_main_process:
        accelerator.init_trackers("phenodiff-autoencoder", config={k: str(v) for k, v in config.to_dict()["autoencoder"].items()})
        logger.info("Autoencoder: %.2fM parameters, %d training images", sum(p.numel() for p in vae.parameters()) / 1e6, len(train))

    def compute_loss(model, batch, step):
        pixels = batch["pixel_values"]
        reconstruction, kl = model(pixels)
        reconstruction_loss = F.l1_loss(reconstruction, pixels)
        feature_loss = image_gradient_loss(reconstruction, pixels)
        kl = kl.mean() / pixels[0].numel()
        loss = reconstruction_loss + ae.feature_weight * feature_loss + ae.kl_weight * kl
        return {"loss": loss, "l1": reconstruction_loss, "gradient": feature_loss, "kl": kl}

    privacy = config.privacy
    if privacy.enabled and privacy.autoencoder_epsilon is not None and not privacy.public_data:
        result = _train_dp(config, vae, train, stage_dir, accelerator, resume_from_checkpoint)
    else:
        result = run_loop(
            accelerator=accelerator, model=AutoencoderForTraining(vae), params=list(vae.parameters()), dataset=train, config=ae,
            stage_dir=stage_dir, seed=config.seed, compute_loss=compute_loss,
            resume_from_checkpoint=resume_from_checkpoint, description="Autoencoder",
        )
    accelerator.wait_for_everyone()
    final = stage_dir / "model"
    if accelerator.is_main_process:
        stats = evaluate_autoencoder(vae, train)
        if hasattr(result, "ledger_state"):
            # Under DP the factor is a Gaussian-mechanism release, composed into the autoencoder's ledger.
            from ..privacy.dp_autoencoder import release_latent_scale, write_autoencoder_privacy

            scaling, ledger = release_latent_scale(vae, train, result)
            vae.register_to_config(scaling_factor=scaling)
            write_autoencoder_privacy(stage_dir, result, ledger)
            result.component_epsilon = ledger.total_epsilon()
        else:
            vae.register_to_config(scaling_factor=1.0 / max(stats["latent_std"], 1e-6))
        test = torch_split(dataset, "test", config.data.resolution)
        test_stats = evaluate_autoencoder(vae, test)
        vae.save_pretrained(final, safe_serialization=True)
        # Under DP the training-split PSNR is left out: it is a statistic of the private images without noise.
        train_psnr = None if hasattr(result, "ledger_state") else stats["psnr_db"]
        metrics = {"global_step": result.global_step, "train_psnr_db": train_psnr, "test_psnr_db": test_stats["psnr_db"],
                   "scaling_factor": vae.config.scaling_factor, "resumed_from": getattr(result, "resumed_from", None),
                   "epsilon": getattr(result, "component_epsilon", None)}
        atomic_write_json(stage_dir / "metrics.json", metrics)
        logger.info("Autoencoder saved to %s: test PSNR %.2f dB", final, test_stats["psnr_db"])
    finish_trackers(accelerator)
    return final


def _train_dp(config: TrainConfig, vae: AutoencoderKL, train, stage_dir: Path, accelerator, resume_from_checkpoint):
    """Train the autoencoder with DP-SGD to its share of the target epsilon (its ledger is written after the scale release)."""
    from ..privacy.dp_autoencoder import train_autoencoder_dp

    if accelerator.num_processes > 1:
        raise ValueError("DP training runs in one process; launch without --multi_gpu/--num_processes for privacy.enabled.")
    ae = config.autoencoder
    vae.to(accelerator.device)
    result = train_autoencoder_dp(
        model=AutoencoderForTraining(vae), dataset=train, privacy=config.privacy, stage=ae, checkpoint_dir=stage_dir / "checkpoints",
        seed=config.seed, resume=resume_from_checkpoint is not None,
        loss_weights={"gradient": ae.feature_weight, "kl": ae.kl_weight},
    )
    return result
