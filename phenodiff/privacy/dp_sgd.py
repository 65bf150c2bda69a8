"""DP-SGD training loop shared by the models that see private images (the denoiser and the autoencoder).

Each step (Abadi et al., 2016):

1. Poisson-sample a batch with rate q.
2. Compute per-sample gradients with opacus' GradSampleModule (the caller's loss may first average
   several per-example gradients, as noise multiplicity does).
3. Clip each example's gradient to L2 norm C, sum, add N(0, sigma^2 C^2 I) and divide by the expected
   batch size.

The noise multiplier sigma is the smallest that keeps the planned schedule within the component's epsilon
budget under the ledger's accountant. The budget is the target epsilon minus what other components of the
ledger already spent. Training stops before a step would push the ledger's total above the target.

Only one process is supported: opacus needs a distributed wrapper (DPDDP) for several processes, which
this module does not set up.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..utils.io import atomic_write_json
from .accounting import PrivacyLedger, noise_multiplier_for_target, sample_rate_for
from .errors import UnreachablePrivacyTargetError

logger = logging.getLogger(__name__)


@dataclass
class DPTrainingResult:
    """Outcome of a DP-SGD run: the last step, the noise used and the ledger's composed epsilon."""

    global_step: int
    noise_multiplier: float
    sample_rate: float
    epsilon: float
    delta: float
    stopped_early: bool
    ledger_state: dict
    component_epsilon: float = 0.0
    audit_actions: list = field(default_factory=list)


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


def train_dp_sgd(
    *,
    module: torch.nn.Module,
    params: list[torch.nn.Parameter],
    dataset: torch.utils.data.Dataset,
    backward: Callable[[GradSampleModule, dict], torch.Tensor | None],
    component: str,
    note: str,
    privacy,
    stage,
    checkpoint_dir: Path,
    seed: int,
    resume: bool,
    ledger: PrivacyLedger | None = None,
    after_step: Callable[[int], None] | None = None,
    audit: Callable[[int, float], object] | None = None,
    description: str = "DP-SGD",
) -> DPTrainingResult:
    """Train ``params`` of ``module`` with DP-SGD on ``dataset`` and record the steps as ledger component ``component``.

    Args:
        module: The model; its trainable parameters are ``params``.
        dataset: Private examples; batches are Poisson-sampled.
        backward: Called as ``backward(grad_sample_module, batch)`` for a non-empty batch. It computes the
            loss (a mean of per-example losses), calls ``loss.backward()``, leaves one ``grad_sample`` row
            per example in every trainable parameter and returns the loss (or None).
        component: Ledger name of this model.
        note: Ledger note (clipping bound, multiplicity, ...).
        privacy: :class:`~phenodiff.training.config.PrivacyConfig` (target epsilon and delta, C, accountant).
        stage: Stage config with ``train_batch_size``, ``max_train_steps``, ``learning_rate``,
            ``checkpointing_steps`` and ``checkpoints_total_limit``.
        checkpoint_dir: Where ``checkpoint-<step>`` folders are written and resumed from.
        seed: Seeds Poisson sampling.
        resume: Continue from the latest checkpoint (its ledger continues epsilon, never from zero).
        ledger: Components that already spent part of the target (for example a DP autoencoder); a new
            ledger when None. This component gets the target minus their epsilon.
        after_step: Called with the step number after each optimizer step.
        audit: Called as ``audit(step, noise_multiplier)`` every ``privacy.audit_steps`` steps; returns a
            :class:`~phenodiff.privacy.audit.ControllerAction`. ``raise_noise`` continues with the new noise
            multiplier (the ledger accounts the later steps with it); ``halt`` stops training.

    Raises:
        UnreachablePrivacyTargetError: the target epsilon cannot be met with this data and schedule.
    """
    from ..training.checkpoints import list_checkpoints

    size = len(dataset)
    delta = privacy.target_delta if privacy.target_delta is not None else 1.0 / (10.0 * size)
    sample_rate = sample_rate_for(expected_batch_size=stage.train_batch_size, dataset_size=size)
    ledger = ledger or PrivacyLedger(delta=delta, accountant=privacy.accountant, dataset_size=size)
    spent = ledger.total_epsilon()
    budget = privacy.target_epsilon - spent
    if budget <= 0:
        raise UnreachablePrivacyTargetError(
            f"Other components already spent epsilon {spent:.4g} of the target {privacy.target_epsilon:g}, so nothing is left "
            f"for {component!r}; raise privacy.target_epsilon or give the earlier components a smaller share."
        )
    sigma = noise_multiplier_for_target(target_epsilon=budget, target_delta=ledger.delta, sample_rate=sample_rate,
                                        steps=stage.max_train_steps, accountant=privacy.accountant, dataset_size=size)
    if component not in ledger.components():
        ledger.add_dp_sgd_component(component, note=note)

    device = next(module.parameters()).device
    model = GradSampleModule(module, batch_first=True, loss_reduction="mean")
    # The noise generator is seeded by the operating system: the config seed is published with the weights,
    # and noise drawn from it could be recomputed and subtracted.
    noise_generator = torch.Generator(device=device)
    noise_generator.manual_seed(secrets.randbits(63))
    optimizer = DPOptimizer(torch.optim.AdamW(params, lr=stage.learning_rate), noise_multiplier=sigma,
                            max_grad_norm=privacy.max_grad_norm, expected_batch_size=stage.train_batch_size,
                            generator=noise_generator)
    generator = torch.Generator().manual_seed(seed)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=generator)

    step, actions = 0, []
    checkpoints = list_checkpoints(checkpoint_dir) if resume else []
    if checkpoints:
        state = load_dp_checkpoint(checkpoints[-1], model=module, optimizer=optimizer.original_optimizer, generator=generator)
        step = int(state["global_step"])
        ledger.load_state_dict(state["ledger"])
        # A noise multiplier that the audit controller raised stays raised after a resume.
        sigma = max(sigma, float(state.get("noise_multiplier", sigma)))
        optimizer.noise_multiplier = sigma
        actions = list(state.get("audit_actions", []))
        logger.info("Resumed DP training from %s at step %d, epsilon so far %.4g", checkpoints[-1], step, ledger.total_epsilon())

    logger.info("%s: N=%d, q=%.4g, sigma=%.4g, C=%g, %d steps planned, epsilon budget %.4g of target %g at delta %.3g",
                description, size, sample_rate, sigma, privacy.max_grad_norm, stage.max_train_steps, budget,
                privacy.target_epsilon, ledger.delta)

    def checkpoint(at: int) -> None:
        save_dp_checkpoint(checkpoint_dir / f"checkpoint-{at}", model=module, optimizer=optimizer.original_optimizer,
                           step=at, ledger=ledger, generator=generator,
                           extra={"noise_multiplier": sigma, "audit_actions": actions})

    progress = tqdm(total=stage.max_train_steps, initial=step, desc=description)
    stopped_early = False
    # A run that the audit controller halted stays halted when it is resumed.
    halted = any(action.get("kind") == "halt" for action in actions)
    while step < stage.max_train_steps and not (stopped_early or halted):
        for batch in loader:
            if step % privacy.epsilon_check_steps == 0 and step > 0 and ledger.would_exceed(
                target_epsilon=privacy.target_epsilon, component=component,
                extra_steps=min(privacy.epsilon_check_steps, stage.max_train_steps - step),
            ):
                stopped_early = True
                break
            model.train()
            batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
            if len(next(iter(batch.values()))):
                loss = backward(model, batch)
            else:
                # An empty Poisson batch still takes a noisy step: zero per-sample gradients, then the noise.
                loss = None
                for parameter in params:
                    parameter.grad_sample = torch.zeros((0, *parameter.shape), device=parameter.device, dtype=parameter.dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ledger.record_steps(component, noise_multiplier=sigma, sample_rate=sample_rate)
            step += 1
            progress.update(1)
            if loss is not None:
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
                checkpoint(step)
                for old in list_checkpoints(checkpoint_dir)[: -(stage.checkpoints_total_limit or 10**9)]:
                    shutil.rmtree(old, ignore_errors=True)
            if step >= stage.max_train_steps or halted:
                break
    progress.close()
    if halted:
        reason = next(action for action in reversed(actions) if action.get("kind") == "halt")["reason"]
        logger.warning("Stopped at step %d: the memorisation audit controller halted training (%s).", step, reason)
    if stopped_early:
        logger.warning("Stopped at step %d: the next steps would exceed target epsilon %g.", step, privacy.target_epsilon)
    if stopped_early or halted:
        checkpoint(step)
    model._close()
    epsilon = ledger.total_epsilon()
    logger.info("%s finished at step %d: epsilon %.4g (this component %.4g) at delta %.3g", description, step, epsilon,
                ledger.component_epsilon(component), ledger.delta)
    return DPTrainingResult(global_step=step, noise_multiplier=sigma, sample_rate=sample_rate, epsilon=epsilon, delta=ledger.delta,
                            stopped_early=stopped_early or halted, ledger_state=ledger.state_dict(),
                            component_epsilon=ledger.component_epsilon(component), audit_actions=actions)
