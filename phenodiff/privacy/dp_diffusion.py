"""DP-SGD training of the conditional denoiser (phenotype encoder + UNet) with opacus.

Each step (Abadi et al., 2016, with noise multiplicity from Dockhorn et al., 2022):

1. Poisson-sample a batch with rate q.
2. Repeat every example K times with fresh latent, noise and timestep draws.
3. Compute per-sample gradients with opacus' GradSampleModule and average each example's K gradients.
4. Clip each example's gradient to L2 norm C, sum, add N(0, sigma^2 C^2 I) and divide by the expected
   batch size.

The noise multiplier sigma is the smallest that keeps the planned schedule within the target epsilon
under the ledger's accountant. Training stops before a step would exceed the target.

Only one process is supported: opacus needs a distributed wrapper (DPDDP) for several processes, which
this module does not set up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..utils.io import atomic_write_json
from .accounting import PrivacyLedger, noise_multiplier_for_target, sample_rate_for

logger = logging.getLogger(__name__)

DP_COMPONENT = "unet+phenotype_encoder"
TRAINABLE_CHOICES = ("all", "attention_and_conditioning")


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


@dataclass
class DPTrainingResult:
    global_step: int
    noise_multiplier: float
    sample_rate: float
    epsilon: float
    delta: float
    stopped_early: bool
    ledger_state: dict
    audit_actions: list = None


def save_dp_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                       ledger: PrivacyLedger, generator: torch.Generator, extra: dict | None = None) -> None:
    """Write weights, optimizer moments and RNG states as safetensors and the ledger as JSON, atomically."""
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(staging / "model.safetensors"))
    tensors, scalars = {}, {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampler"] = generator.get_state()
    save_file(tensors, str(staging / "optimizer.safetensors"))
    atomic_write_json(staging / "trainer_state.json", {"global_step": step, "optimizer_scalars": scalars,
                                                        "ledger": ledger.state_dict(), **(extra or {})})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def load_dp_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       generator: torch.Generator) -> dict:
    """Restore what :func:`save_dp_checkpoint` wrote; return the trainer state (step, ledger state, extras)."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    state = json.loads((folder / "trainer_state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer_state = optimizer.state_dict()
    for index in optimizer_state["state"].keys() | {int(k.split(".")[0]) for k in tensors if not k.startswith("rng.")}:
        entry = {}
        for key, value in tensors.items():
            if key.split(".")[0] == str(index):
                entry[key.split(".", 1)[1]] = value
        for key, value in state["optimizer_scalars"].items():
            if key.split(".")[0] == str(index):
                entry[key.split(".", 1)[1]] = value
        optimizer_state["state"][index] = entry
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.sampler"])
    return state


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
    after_step: Callable[[int], None] | None = None,
    audit: Callable[[int, float], object] | None = None,
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
        after_step: Called with the step number after each optimizer step (EMA, validation).
        audit: Called as ``audit(step, noise_multiplier)`` every ``privacy.audit_steps`` steps; returns a
            :class:`~phenodiff.privacy.audit.ControllerAction`. ``raise_noise`` continues with the new noise
            multiplier (the ledger accounts the later steps with it); ``halt`` stops training.

    Raises:
        UnreachablePrivacyTargetError: the target epsilon cannot be met with this data and schedule.
    """
    from ..training.checkpoints import list_checkpoints

    size = len(dataset)
    multiplicity = int(privacy.noise_multiplicity)
    if multiplicity < 1:
        raise ValueError(f"noise_multiplicity must be >= 1, got {multiplicity}.")
    delta = privacy.target_delta if privacy.target_delta is not None else 1.0 / (10.0 * size)
    sample_rate = sample_rate_for(expected_batch_size=stage.train_batch_size, dataset_size=size)
    sigma = noise_multiplier_for_target(target_epsilon=privacy.target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                        steps=stage.max_train_steps, accountant=privacy.accountant, dataset_size=size)
    ledger = PrivacyLedger(delta=delta, accountant=privacy.accountant, dataset_size=size)
    ledger.add_dp_sgd_component(DP_COMPONENT, note=f"DP-SGD, C={privacy.max_grad_norm}, K={multiplicity}, trainable={privacy.trainable}")

    params = select_trainable(denoiser, privacy.trainable)
    model = GradSampleModule(denoiser, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.AdamW(params, lr=stage.learning_rate), noise_multiplier=sigma,
                            max_grad_norm=privacy.max_grad_norm, expected_batch_size=stage.train_batch_size)
    generator = torch.Generator().manual_seed(seed)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=generator)

    step = 0
    checkpoints = list_checkpoints(checkpoint_dir) if resume else []
    if checkpoints:
        state = load_dp_checkpoint(checkpoints[-1], model=denoiser, optimizer=optimizer.original_optimizer, generator=generator)
        step = int(state["global_step"])
        ledger.load_state_dict(state["ledger"])
        logger.info("Resumed DP training from %s at step %d, epsilon so far %.4g", checkpoints[-1], step, ledger.total_epsilon())

    logger.info("DP-SGD: N=%d, q=%.4g, sigma=%.4g, C=%g, K=%d, %d steps planned, target epsilon %g at delta %.3g",
                size, sample_rate, sigma, privacy.max_grad_norm, multiplicity, stage.max_train_steps, privacy.target_epsilon, delta)
    progress = tqdm(total=stage.max_train_steps, initial=step, desc="Diffusion (DP)")
    stopped_early = False
    halted = False
    actions = []
    while step < stage.max_train_steps:
        for batch in loader:
            if step % privacy.epsilon_check_steps == 0 and step > 0 and ledger.would_exceed(
                target_epsilon=privacy.target_epsilon, extra_steps=min(privacy.epsilon_check_steps, stage.max_train_steps - step)
            ):
                stopped_early = True
                break
            model.train()
            size_b = batch["latent_mean"].shape[0]
            if size_b:
                def repeat(tensor):
                    return tensor.repeat_interleave(multiplicity, dim=0)

                mean, std = repeat(batch["latent_mean"]), repeat(batch["latent_std"])
                latent = (mean + std * torch.randn_like(std)) * scaling
                noise = torch.randn_like(latent)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latent.shape[0],))
                noisy = noise_scheduler.add_noise(latent, noise, timesteps)
                target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latent, noise, timesteps)
                prediction = model(noisy, timesteps, repeat(batch["age"]), repeat(batch["sex"]), repeat(batch["pathology"]))
                loss = F.mse_loss(prediction, target)
                loss.backward()
                average_multiplicity_grad_samples(params, multiplicity)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ledger.record_steps(DP_COMPONENT, noise_multiplier=sigma, sample_rate=sample_rate)
            step += 1
            progress.update(1)
            if size_b:
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if after_step is not None:
                after_step(step)
            if audit is not None and privacy.audit_steps > 0 and step % privacy.audit_steps == 0:
                action = audit(step, sigma)
                actions.append(action.to_dict())
                if action.kind == "raise_noise" and action.noise_multiplier != sigma:
                    sigma = float(action.noise_multiplier)
                    optimizer.noise_multiplier = sigma
                elif action.kind == "halt":
                    halted = True
            if step % stage.checkpointing_steps == 0 or step == stage.max_train_steps:
                save_dp_checkpoint(checkpoint_dir / f"checkpoint-{step}", model=denoiser, optimizer=optimizer.original_optimizer,
                                   step=step, ledger=ledger, generator=generator)
                for old in list_checkpoints(checkpoint_dir)[: -(stage.checkpoints_total_limit or 10**9)]:
                    shutil.rmtree(old, ignore_errors=True)
            if step >= stage.max_train_steps or halted:
                break
        if stopped_early or halted:
            break
    progress.close()
    if halted:
        logger.warning("Stopped at step %d: the memorisation audit controller halted training (%s).", step, actions[-1]["reason"])
    if stopped_early or halted:
        if stopped_early:
            logger.warning("Stopped at step %d: the next steps would exceed target epsilon %g.", step, privacy.target_epsilon)
        save_dp_checkpoint(checkpoint_dir / f"checkpoint-{step}", model=denoiser, optimizer=optimizer.original_optimizer,
                           step=step, ledger=ledger, generator=generator)
    model._close()
    epsilon = ledger.total_epsilon()
    logger.info("DP training finished at step %d: epsilon %.4g at delta %.3g", step, epsilon, delta)
    return DPTrainingResult(global_step=step, noise_multiplier=sigma, sample_rate=sample_rate, epsilon=epsilon, delta=delta,
                            stopped_early=stopped_early or halted, ledger_state=ledger.state_dict(), audit_actions=actions)
