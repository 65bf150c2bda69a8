"""Time phenodiff's diffusion training step against a bare diffusers UNet step, and sampling per scheduler.

    python benchmarks/generator_speed.py --config recipes/configs/phantom.yaml --batch_size 64 --repeats 10

Both training steps use the same UNet config, batch and optimizer; the phenodiff step adds the phenotype
encoder and its conditioning dropout. Figures are medians over ``--repeats`` steps after two warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from phenodiff.data.schema import resolve_schema
from phenodiff.pipelines import PhenoDiffPipeline
from phenodiff.training import TrainConfig
from phenodiff.training.models import ConditionalDenoiser, build_encoder, build_noise_scheduler, build_unet, build_vae


def median_seconds(step, repeats: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/phantom.yaml")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--inference_steps", type=int, default=25)
    args = parser.parse_args()

    config = TrainConfig.from_yaml(args.config)
    schema = resolve_schema(config.data.dataset)
    cfg = config.diffusion
    latent_size = config.data.resolution // 2 ** (len(config.autoencoder.block_out_channels) - 1)
    channels = config.autoencoder.latent_channels
    torch.manual_seed(0)
    batch = args.batch_size
    latents = torch.randn(batch, channels, latent_size, latent_size)
    noise_scheduler = build_noise_scheduler(cfg)
    age = torch.rand(batch) * 60 + 20
    sex = torch.randint(0, 2, (batch,))
    pathology = (torch.rand(batch, len(schema.pathology.vocabulary)) < 0.3).float()

    def make_step(model, forward):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            noise = torch.randn_like(latents)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
            noisy = noise_scheduler.add_noise(latents, noise, t)
            loss = F.mse_loss(forward(model, noisy, t), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    bare_unet = build_unet(cfg, latent_channels=channels, latent_size=latent_size)
    tokens = torch.randn(batch, build_encoder(cfg, schema).num_tokens, cfg.cross_attention_dim)
    bare = median_seconds(make_step(bare_unet, lambda m, x, t: m(x, t, encoder_hidden_states=tokens).sample), args.repeats)

    denoiser = ConditionalDenoiser(build_unet(cfg, latent_channels=channels, latent_size=latent_size), build_encoder(cfg, schema))
    ours = median_seconds(make_step(denoiser, lambda m, x, t: m(x, t, age, sex, pathology)), args.repeats)

    print(f"config {args.config}, batch {batch}, latents {channels}x{latent_size}x{latent_size}, torch threads {torch.get_num_threads()}")
    print(f"{'training step':<32}{'seconds':>10}{'images/s':>12}")
    print(f"{'bare diffusers UNet':<32}{bare:>10.4f}{batch / bare:>12.1f}")
    print(f"{'phenodiff (encoder + UNet)':<32}{ours:>10.4f}{batch / ours:>12.1f}")
    print(f"ratio phenodiff / bare: {ours / bare:.3f}x")

    vae = build_vae(config.autoencoder, channels=schema.channels, resolution=config.data.resolution)
    pipe = PhenoDiffPipeline(vae=vae, unet=denoiser.unet, phenotype_encoder=denoiser.phenotype_encoder, scheduler=noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    print(f"\nsampling 16 images, {args.inference_steps} steps, guidance 2.0")
    print(f"{'scheduler':<32}{'seconds':>10}{'images/s':>12}")
    for scheduler_cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        pipe.scheduler = scheduler_cls.from_config(noise_scheduler.config)
        seconds = median_seconds(lambda: pipe(sex="female", num_images_per_prompt=16, num_inference_steps=args.inference_steps,
                                              output_type="np", generator=torch.Generator().manual_seed(0)), max(1, args.repeats // 5))
        print(f"{scheduler_cls.__name__:<32}{seconds:>10.3f}{16 / seconds:>12.1f}")


if __name__ == "__main__":
    main()
