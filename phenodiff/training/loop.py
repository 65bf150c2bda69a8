"""The optimisation loop shared by both training stages: accelerate, LR schedule, checkpoints, progress and logs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, resolve_resume_path, save_checkpoint
from .config import StageConfig

logger = logging.getLogger(__name__)


def make_accelerator(stage_dir: Path, *, gradient_accumulation_steps: int, mixed_precision: str, report_to: str | None,
                     seed: int) -> Accelerator:
    """Create an Accelerator that logs to ``stage_dir/logs`` (tensorboard works offline) and seed the run."""
    project = ProjectConfiguration(project_dir=str(stage_dir), logging_dir=str(stage_dir / "logs"))
    log_with = None if report_to in (None, "none", "") else report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_config=project,
        # Without a GPU, cpu=True makes a multi-process launch (accelerate launch --multi_gpu --num_processes N)
        # use gloo across CPU processes; otherwise accelerate 1.16 falls back to N independent single-process runs.
        cpu=not torch.cuda.is_available(),
        # A seedable sampler shuffles each epoch with seed + epoch, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(seed, device_specific=True)
    return accelerator


def finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers but keep the process group, so the next stage can run in the same launch.

    ``Accelerator.end_training`` would also destroy the process group; the recipe does that once at exit.
    """
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()


@dataclass
class LoopResult:
    global_step: int
    last_losses: dict[str, float]
    resumed_from: str | None


def run_loop(
    *,
    accelerator: Accelerator,
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    dataset: torch.utils.data.Dataset,
    config: StageConfig,
    stage_dir: Path,
    seed: int,
    compute_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
    resume_from_checkpoint: str | None = None,
    after_step: Callable[[int], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    restore_extra_state: Callable[[dict[str, Any], Path], None] | None = None,
    save_extra: Callable[[Path], None] | None = None,
    description: str = "Training",
) -> LoopResult:
    """Train ``model`` for ``config.max_train_steps`` optimizer steps.

    ``compute_loss(model, batch, step)`` receives the prepared (possibly distributed) model and returns a dictionary whose ``"loss"`` entry is minimised; the other entries
    are logged. ``after_step(step)`` runs after every optimizer step (EMA updates, validation).
    ``extra_state``/``restore_extra_state``/``save_extra`` add state to checkpoints and restore it.
    """
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        shuffle=True,
        drop_last=len(dataset) >= config.train_batch_size,
        generator=generator,
        num_workers=config.dataloader_num_workers,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    checkpoint_dir = stage_dir / "checkpoints"

    global_step, resumed_from = 0, None
    resume_path = resolve_resume_path(checkpoint_dir, resume_from_checkpoint)
    if resume_path is not None:
        state = load_checkpoint(accelerator, resume_path)
        global_step = int(state["global_step"])
        resumed_from = str(resume_path)
        if restore_extra_state is not None:
            restore_extra_state(state, resume_path)

    logger.info("%s: %d examples, %d process(es), batch %d per process, %d steps", description, len(dataset),
                accelerator.num_processes, config.train_batch_size, config.max_train_steps)
    updates_per_epoch = max(1, math.ceil(len(loader) / config.gradient_accumulation_steps))
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    progress = tqdm(
        total=config.max_train_steps, initial=global_step, desc=description, disable=not accelerator.is_local_main_process
    )
    last: dict[str, float] = {}
    window_images, window_start = 0, time.perf_counter()
    epoch = first_epoch
    while global_step < config.max_train_steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if (epoch == first_epoch and skip_batches) else loader
        model.train()
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                losses = compute_loss(model, batch, global_step)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window_images += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            last = {k: float(v.detach().mean()) for k, v in losses.items()}
            last["lr"] = lr_scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{last['loss']:.4f}")
            accelerator.log(last, step=global_step)
            if global_step % config.logging_steps == 0 or global_step == config.max_train_steps:
                elapsed = time.perf_counter() - window_start
                logger.info(
                    "step %d/%d %s images/s %.1f",
                    global_step, config.max_train_steps,
                    " ".join(f"{k} {v:.4g}" for k, v in last.items()),
                    window_images / max(elapsed, 1e-9),
                )
                window_images, window_start = 0, time.perf_counter()
            if after_step is not None:
                after_step(global_step)
            if global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps:
                save_checkpoint(accelerator, checkpoint_dir, global_step, extra_state() if extra_state else None,
                                config.checkpoints_total_limit, save_extra=save_extra)
            if global_step >= config.max_train_steps:
                break
        epoch += 1
        skip_batches = 0
    progress.close()
    return LoopResult(global_step=global_step, last_losses=last, resumed_from=resumed_from)
