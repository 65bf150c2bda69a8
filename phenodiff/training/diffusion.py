"""Stage 2: train the phenotype encoder and conditional UNet on the frozen autoencoder's latents."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from ..pipelines.pipeline_phenodiff import PhenoDiffPipeline, reject_pickle_files
from ..utils.io import atomic_write_json
from .config import TrainConfig
from .data import prepare_dataset, torch_split
from .checkpoints import list_checkpoints
from .loop import finish_trackers, make_accelerator, run_loop
from .models import ConditionalDenoiser, batch_extras, build_encoder, build_noise_scheduler, build_unet
from .validation import grid_ages_of, sample_grid, save_grid_png, validation_phenotypes

logger = logging.getLogger(__name__)

EMA_WEIGHTS = "ema.safetensors"
EMA_STATE = "ema_state.json"


class LatentDataset(torch.utils.data.Dataset):
    """Posterior mean and standard deviation of each training image's latent, with its phenotype.

    Encoding once up front keeps the frozen encoder out of the training step; a fresh latent is drawn
    from the stored posterior at every step.
    """

    def __init__(self, images, vae: AutoencoderKL, batch_size: int = 128):
        self.images = images
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = images.pixel_values[start : start + batch_size].to(vae.device, vae.dtype)
                posterior = vae.encode(pixels).latent_dist
                means.append(posterior.mean.float().cpu())
                stds.append(posterior.std.float().cpu())
        self.latent_mean = torch.cat(means)
        self.latent_std = torch.cat(stds)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = self.images[index]
        item["latent_mean"] = self.latent_mean[index]
        item["latent_std"] = self.latent_std[index]
        for name, values in self.images.extras.items():
            item[f"extra_{name}"] = values[index]
        return item


def predicted_original(noise_scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    r"""One-step estimate :math:`\hat x_0` from the model output (Ho et al., 2020, eq. 15; Salimans & Ho, 2022 for v).

    epsilon: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon) / \sqrt{\bar\alpha_t}`;
    v: :math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v`.
    """
    alpha_bar = noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1).to(noisy.dtype)
    if noise_scheduler.config.prediction_type == "epsilon":
        return (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction


def load_frozen_vae(path: str | Path) -> AutoencoderKL:
    reject_pickle_files(path)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Autoencoder not found at {path}; train stage 'autoencoder' first or pass --pretrained_vae_path.")
    vae = AutoencoderKL.from_pretrained(path, use_safetensors=True)
    vae.requires_grad_(False)
    return vae.eval()


def train_diffusion(config: TrainConfig, *, resume_from_checkpoint: str | None = None, pretrained_vae_path: str | None = None) -> Path:
    """Train stage 2 and save the full pipeline (EMA weights when enabled) to ``output_dir/pipeline``."""
    output_dir = Path(config.output_dir)
    stage_dir = output_dir / "diffusion"
    cfg = config.diffusion
    accelerator = make_accelerator(stage_dir, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                   mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    with accelerator.main_process_first():
        dataset = prepare_dataset(config.data, output_dir)
    schema = dataset.schema
    vae = load_frozen_vae(pretrained_vae_path or output_dir / "autoencoder" / "model").to(accelerator.device)
    train_images = torch_split(dataset, "train", config.data.resolution)
    latents = LatentDataset(train_images, vae)
    latent_channels, latent_size = latents.latent_mean.shape[1], latents.latent_mean.shape[-1]

    unet = build_unet(cfg, latent_channels=latent_channels, latent_size=latent_size)
    encoder = build_encoder(cfg, schema)
    if config.privacy.pretrained_pipeline:
        unet, encoder = _load_pretrained_denoiser(config.privacy.pretrained_pipeline, schema)
    denoiser = ConditionalDenoiser(unet, encoder)
    noise_scheduler = build_noise_scheduler(cfg)
    scaling = vae.config.scaling_factor
    denoiser.to(accelerator.device)
    ema = EMAModel(denoiser.parameters(), decay=cfg.ema_decay) if cfg.use_ema else None
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("phenodiff-diffusion", config={k: str(v) for k, v in config.to_dict()["diffusion"].items()})
        logger.info("UNet %.2fM + encoder %.2fM parameters, latents %dx%dx%d, %d training images",
                    sum(p.numel() for p in unet.parameters()) / 1e6, sum(p.numel() for p in encoder.parameters()) / 1e6,
                    latent_channels, latent_size, latent_size, len(latents))

    # Grid ages come from the schema's age range, not from the private records.
    grid_ages = grid_ages_of(schema)
    grid_phenotypes, row_titles, column_titles = validation_phenotypes(list(schema.pathology.vocabulary), schema.pathology.multi_label, grid_ages)

    shift_target = None
    if cfg.shift_weight > 0 and not config.privacy.enabled:
        shift_target = _real_shift_target(latents, train_images.groups, cfg, seed=config.seed)

    def compute_loss(model, batch, step):
        latent = (batch["latent_mean"] + batch["latent_std"] * torch.randn_like(batch["latent_std"])) * scaling
        noise = torch.randn_like(latent)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latent.shape[0],), device=latent.device)
        noisy = noise_scheduler.add_noise(latent, noise, timesteps)
        target = noise if cfg.prediction_type == "epsilon" else noise_scheduler.get_velocity(latent, noise, timesteps)
        prediction = model(noisy, timesteps, batch["age"], batch["sex"], batch["pathology"], conditioning_dropout=True,
                           extras=batch_extras(batch, denoiser.phenotype_encoder.extra_names))
        denoising = F.mse_loss(prediction.float(), target.float())
        losses = {"loss": denoising, "denoising": denoising}
        if cfg.clinical_weight > 0:
            # L_clinical = ||f(x_real) - f(decode(x0_hat))||^2 with f the frozen encoder's posterior mean,
            # only where t is small enough for x0_hat to resemble an image.
            mask = timesteps < cfg.clinical_max_timestep
            if mask.any():
                x0_hat = predicted_original(noise_scheduler, noisy[mask], prediction[mask], timesteps[mask])
                decoded = vae.decode(x0_hat / scaling).sample
                features = vae.encode(decoded).latent_dist.mean
                clinical = F.mse_loss(features, batch["latent_mean"][mask])
            else:
                clinical = denoising.new_zeros(())
            losses["clinical"] = clinical
            losses["loss"] = losses["loss"] + cfg.clinical_weight * clinical
        if shift_target is not None:
            losses["shift"] = _shift_term(noise_scheduler, noisy, prediction, timesteps, batch, shift_target, cfg,
                                          train_images.groups, vae, scaling)
            losses["loss"] = losses["loss"] + cfg.shift_weight * losses["shift"]
        return losses

    def make_pipeline(use_ema_weights: bool) -> PhenoDiffPipeline:
        model = denoiser
        if ema is not None and use_ema_weights:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        pipeline = PhenoDiffPipeline(vae=vae, unet=model.unet, phenotype_encoder=model.phenotype_encoder,
                                     scheduler=build_noise_scheduler(cfg))
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def restore_weights():
        if ema is not None:
            ema.restore(denoiser.parameters())

    def after_step(step):
        if ema is not None:
            ema.step(denoiser.parameters())
        if accelerator.is_main_process and (step % cfg.validation_steps == 0 or step == cfg.max_train_steps):
            pipeline = make_pipeline(use_ema_weights=True)
            images = sample_grid(pipeline, grid_phenotypes, num_inference_steps=cfg.validation_inference_steps,
                                 guidance_scale=cfg.guidance_scale, seed=config.seed)
            restore_weights()
            path = save_grid_png(images, row_titles, column_titles, stage_dir / "samples" / f"step-{step:06d}.png",
                                 title=f"{schema.name}, step {step}")
            logger.info("Validation grid written to %s", path)

    def save_ema(folder: Path):
        if ema is not None:
            save_file({f"param_{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}, str(folder / EMA_WEIGHTS))
            atomic_write_json(folder / EMA_STATE, {"optimization_step": ema.optimization_step, "decay": ema.decay})

    def restore_ema(state, folder: Path):
        if ema is not None and (folder / EMA_WEIGHTS).is_file():
            tensors = load_file(str(folder / EMA_WEIGHTS))
            ema.shadow_params = [tensors[f"param_{i}"].to(p.device) for i, p in enumerate(ema.shadow_params)]
            ema.optimization_step = json.loads((folder / EMA_STATE).read_text())["optimization_step"]

    privacy_section = None
    if config.privacy.enabled:
        audit = None
        if config.privacy.audit_steps > 0:
            from ..privacy.audit.pipeline_audit import make_training_audit

            audit = make_training_audit(lambda: make_pipeline(use_ema_weights=False), dataset,
                                        resolution=config.data.resolution, privacy=config.privacy, seed=config.seed)
        from ..privacy.accounting import PrivacyLedger
        from ..privacy.dp_autoencoder import load_autoencoder_ledger

        vae_folder = Path(pretrained_vae_path or output_dir / "autoencoder" / "model").parent
        autoencoder_ledger = load_autoencoder_ledger(vae_folder)
        privacy = config.privacy
        ledger = autoencoder_ledger or PrivacyLedger(
            delta=privacy.target_delta if privacy.target_delta is not None else 1.0 / (10.0 * len(latents)),
            accountant=privacy.accountant, dataset_size=len(latents))
        shift = None
        if cfg.shift_weight > 0:
            from .dp_shift import build_dp_shift

            # A resumed run reads the target it released before (the checkpoint's ledger has that release).
            shift = build_dp_shift(config, latents, train_images.groups, ledger, lambda: make_pipeline(use_ema_weights=False),
                                   noise_scheduler, scaling, schema, folder=stage_dir / "shift_target",
                                   reuse=resume_from_checkpoint is not None and bool(list_checkpoints(stage_dir / "checkpoints")))
        result = _train_dp(config, denoiser, latents, noise_scheduler, scaling, stage_dir, accelerator, after_step,
                           resume_from_checkpoint, audit, ledger, shift)
        privacy_section = _privacy_section(config, result, autoencoder_dp=autoencoder_ledger is not None)
        atomic_write_json(stage_dir / "privacy.json", {"epsilon": result.epsilon, "delta": result.delta,
                                                       "noise_multiplier": result.noise_multiplier, "sample_rate": result.sample_rate,
                                                       "steps": result.global_step, "stopped_early": result.stopped_early,
                                                       "audit_actions": result.audit_actions, "ledger": result.ledger_state})
    else:
        params = [p for p in denoiser.parameters() if p.requires_grad]
        result = run_loop(
            accelerator=accelerator, model=denoiser, params=params, dataset=latents, config=cfg, stage_dir=stage_dir,
            seed=config.seed, compute_loss=compute_loss, resume_from_checkpoint=resume_from_checkpoint,
            after_step=after_step, restore_extra_state=restore_ema, save_extra=save_ema, description="Diffusion",
        )
    accelerator.wait_for_everyone()
    final = output_dir / "pipeline"
    if accelerator.is_main_process:
        pipeline = make_pipeline(use_ema_weights=True)
        from ..hub.model_card import save_pipeline_with_card

        metrics = {"global_step": result.global_step, **getattr(result, "last_losses", {})}
        save_pipeline_with_card(pipeline, final, config=config, dataset=dataset, metrics=metrics, privacy_section=privacy_section)
        restore_weights()
        logger.info("Pipeline saved to %s", final)
    finish_trackers(accelerator)
    return final


def _load_pretrained_denoiser(folder: str | Path, schema):
    """Load the UNet and phenotype encoder of a saved pipeline (non-private pretraining on public data)."""
    from diffusers import UNet2DConditionModel

    from ..models.phenotype_encoder import PhenotypeEncoder

    reject_pickle_files(folder)
    unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet", use_safetensors=True)
    encoder = PhenotypeEncoder.from_pretrained(Path(folder) / "phenotype_encoder", use_safetensors=True)
    if list(encoder.config.pathology_vocabulary) != list(schema.pathology.vocabulary):
        raise ValueError(
            f"The pretrained encoder in {folder} has vocabulary {list(encoder.config.pathology_vocabulary)}, but dataset "
            f"{schema.name!r} uses {list(schema.pathology.vocabulary)}; pretrain on data with the same vocabulary."
        )
    return unet, encoder


def _train_dp(config, denoiser, latents, noise_scheduler, scaling, stage_dir, accelerator, after_step, resume_from_checkpoint,
              audit=None, ledger=None, shift=None):
    from ..privacy.dp_diffusion import train_denoiser_dp

    if accelerator.num_processes > 1:
        raise ValueError("DP training runs in one process; launch without --multi_gpu/--num_processes for privacy.enabled.")
    return train_denoiser_dp(
        denoiser=denoiser, dataset=latents, noise_scheduler=noise_scheduler, scaling=scaling, privacy=config.privacy,
        stage=config.diffusion, checkpoint_dir=stage_dir / "checkpoints", seed=config.seed,
        resume=resume_from_checkpoint is not None, after_step=after_step, audit=audit, ledger=ledger,
        shift=shift, shift_weight=config.diffusion.shift_weight,
    )


def _privacy_section(config, result, *, autoencoder_dp: bool = False) -> str:
    """Model card text stating the epsilon of every component that saw the private images."""
    from ..privacy.accounting import PrivacyLedger

    privacy = config.privacy
    components = {entry["name"]: entry for entry in result.ledger_state.get("components", [])}
    ledger = PrivacyLedger.from_state_dict(result.ledger_state)
    autoencoder_epsilon = sum(ledger.component_epsilon(name) for name in ("autoencoder", "latent_scale") if name in components)
    if privacy.public_data:
        autoencoder = f"trained on public data ({privacy.public_data}); it did not see the private images"
    elif autoencoder_dp:
        autoencoder = (f"DP-SGD (opacus) on the private images, with its latent scaling factor released through the Gaussian "
                       f"mechanism, epsilon = {autoencoder_epsilon:.3f} for both; the ledger composes it with "
                       "the denoiser's")
    else:
        autoencoder = ("trained on the private images **without** differential privacy: epsilon is unbounded for it, so the "
                       "release as a whole has no formal guarantee unless the autoencoder is replaced by one trained on public data "
                       "or trained with DP (privacy.autoencoder_epsilon)")
    stop = " Training stopped early to stay within the target." if result.stopped_early else ""
    lines = [
        f"- Total: epsilon = {result.epsilon:.3f} at delta = {result.delta:.2e} per component (basic composition over "
        f"{len(components)} DP component(s), {privacy.accountant} accountant).",
        f"- Phenotype encoder + UNet: DP-SGD (opacus), epsilon = {result.component_epsilon:.3f}, noise multiplier "
        f"{result.noise_multiplier:.3f}, clipping bound {privacy.max_grad_norm}, sampling rate {result.sample_rate:.4f}, "
        f"{result.global_step} steps, noise multiplicity {privacy.noise_multiplicity}, trainable parameters: {privacy.trainable}.{stop}",
        f"- Autoencoder: {autoencoder}.",
    ]
    for name, entry in components.items():
        if entry.get("mechanism") == "gaussian" and name != "latent_scale":
            lines.append(f"- {name}: Gaussian mechanism release of a statistic of the private images (clipped to a public bound), "
                         f"epsilon = {sum(release['epsilon'] for release in entry.get('releases', [])):.3f}.")
    if privacy.pretrained_pipeline:
        lines.append(f"- Initialisation: the UNet and phenotype encoder start from {privacy.pretrained_pipeline}, trained without DP on "
                     f"{privacy.public_data or 'data the config does not name'}; only the fine-tuning above saw the private images.")
    if privacy.audit_steps > 0:
        lines.append("- The continuous memorisation audit compares generated images with the private training images every "
                     f"{privacy.audit_steps} steps and may raise the noise or stop training. Those decisions are not covered by the "
                     "epsilon above, and neither is the number of steps they led to.")
    lines.append("- The protected unit is one image; a patient with k training images is protected at the group level of k records.")
    return "\n".join(lines)


def _real_shift_target(latents: LatentDataset, group_names, cfg, *, seed: int):
    """Per-group quantiles of the real training latents along random directions: the fixed L_shift target.

    The target is computed from the private images without noise, which is why it is refused under DP.
    """
    from ..alignment import SlicedQuantileTarget, random_projections

    features = latents.latent_mean.flatten(1)
    projections = random_projections(features.shape[1], cfg.shift_num_projections, seed=seed)
    groups = [group_names[int(i)] for i in latents.images.group]
    return SlicedQuantileTarget.from_features(features, groups, projections=projections)


def _shift_term(noise_scheduler, noisy, prediction, timesteps, batch, target, cfg, group_names, vae, scaling):
    """Sliced W1 between the frozen encoder's features of decoded x0_hat and the real target, per group.

    Applied, like the clinical loss, only at timesteps below ``clinical_max_timestep``.
    """
    from ..alignment import sliced_wasserstein_to_target

    mask = timesteps < cfg.clinical_max_timestep
    if mask.sum() < 2:
        return prediction.new_zeros(())
    x0_hat = predicted_original(noise_scheduler, noisy[mask], prediction[mask], timesteps[mask])
    features = vae.encode(vae.decode(x0_hat / scaling).sample).latent_dist.mean.flatten(1)
    groups = [group_names[int(i)] for i in batch["group"][mask]]
    return sliced_wasserstein_to_target(features, groups, target).mean
