"""Time a DP-SGD step of the denoiser against the non-DP step, in one run, at the CPU config's size.

    python benchmarks/dp_overhead.py --config recipes/configs/phantom.yaml --batch_size 64 --repeats 5

Rows: the plain AdamW step; DP-SGD (opacus hooks) training all parameters with K = 1 and K = 4 noise draws
per example; DP-SGD training only attention and conditioning parameters (the DP-LDM fine-tuning setting).
All rows use the same UNet, encoder, batch and inputs; figures are medians after two warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from phenodiff.data.schema import resolve_schema
from phenodiff.privacy.dp_diffusion import average_multiplicity_grad_samples, select_trainable
from phenodiff.training import TrainConfig
from phenodiff.training.models import ConditionalDenoiser, build_encoder, build_unet


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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = TrainConfig.from_yaml(args.config)
    schema = resolve_schema(config.data.dataset)
    cfg = config.diffusion
    size = config.data.resolution // 2 ** (len(config.autoencoder.block_out_channels) - 1)
    channels = config.autoencoder.latent_channels
    batch = args.batch_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, channels, size, size, generator=generator)
    age = torch.rand(batch, generator=generator) * 60 + 20
    sex = torch.randint(0, 2, (batch,), generator=generator)
    pathology = (torch.rand(batch, len(schema.pathology.vocabulary), generator=generator) < 0.3).float()

    def fresh_denoiser():
        torch.manual_seed(0)
        return ConditionalDenoiser(build_unet(cfg, latent_channels=channels, latent_size=size), build_encoder(cfg, schema))

    def make_step(multiplicity: int, private: bool, trainable: str = "all"):
        denoiser = fresh_denoiser()
        params = select_trainable(denoiser, trainable)
        model = GradSampleModule(denoiser) if private else denoiser
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        if private:
            optimizer = DPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)

        def step():
            def repeat(tensor):
                return tensor.repeat_interleave(multiplicity, dim=0)

            noisy = repeat(latents) + torch.randn(batch * multiplicity, channels, size, size)
            t = torch.randint(0, cfg.num_train_timesteps, (batch * multiplicity,))
            loss = F.mse_loss(model(noisy, t, repeat(age), repeat(sex), repeat(pathology)), torch.zeros_like(noisy))
            loss.backward()
            if private:
                average_multiplicity_grad_samples(params, multiplicity)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    rows = [
        ("non-DP, all parameters", make_step(1, False)),
        ("DP-SGD hooks, all, K=1", make_step(1, True)),
        ("DP-SGD hooks, all, K=4", make_step(4, True)),
        ("DP-SGD hooks, attention+cond, K=1", make_step(1, True, "attention_and_conditioning")),
    ]
    print(f"config {args.config}, batch {batch}, latents {channels}x{size}x{size}, torch threads {torch.get_num_threads()}")
    print(f"{'step':<38}{'seconds':>10}{'x non-DP':>10}")
    base = None
    for name, step in rows:
        seconds = median_seconds(step, args.repeats)
        base = base or seconds
        print(f"{name:<38}{seconds:>10.4f}{seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
