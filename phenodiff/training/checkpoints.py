"""Atomic, resumable training checkpoints on top of ``accelerate``'s ``save_state``/``load_state``.

A checkpoint folder ``checkpoint-<step>`` contains accelerate's state (model weights as safetensors; optimizer,
LR-scheduler and RNG states, which accelerate reads back with torch's ``weights_only`` loader) and
``trainer_state.json`` with the step and any extra JSON state (for example a privacy accountant). It is
written under ``checkpoint-<step>.tmp`` and renamed when complete, so a crash never leaves a partial
checkpoint that resuming would pick up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator

from ..utils.io import atomic_write_json

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume_path(folder: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """Turn ``--resume_from_checkpoint`` ('latest', a path or None) into a checkpoint folder or None."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(folder)
        if not checkpoints:
            logger.info("No checkpoint in %s; starting a new run.", folder)
            return None
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} not found or incomplete (no {TRAINER_STATE}); pass 'latest' or a folder listed by "
            f"{[str(p) for p in list_checkpoints(folder)]}."
        )
    return path


def save_checkpoint(accelerator: Accelerator, folder: str | os.PathLike, step: int, extra_state: dict[str, Any] | None = None,
                    total_limit: int | None = None, save_extra: Callable[[Path], None] | None = None) -> Path:
    """Save the accelerator state at ``step`` atomically; keep at most ``total_limit`` checkpoints.

    ``save_extra(folder)`` writes further files (for example EMA weights) before the checkpoint is renamed
    into place. Every process must call this (accelerate writes per-process RNG states).
    """
    folder = Path(folder)
    final = folder / f"checkpoint-{step}"
    staging = folder / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if save_extra is not None:
            save_extra(staging)
        atomic_write_json(staging / TRAINER_STATE, {"global_step": step, **(extra_state or {})})
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(folder)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore the accelerator state from ``path`` and return its trainer state (with ``global_step``)."""
    from ..pipelines.pipeline_phenodiff import PickleCheckpointError

    path = Path(path)
    model_pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    if model_pickles:
        raise PickleCheckpointError(
            f"{path} stores model weights as pickle files {model_pickles}; phenodiff resumes only from safetensors "
            "model weights. Resume from a checkpoint written by phenodiff, or convert the weights to safetensors."
        )
    accelerator.load_state(str(path))
    state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    logger.info("Resumed from %s at step %d", path, state["global_step"])
    return state
