"""Training of the diagnostic classifier with the fairness penalty L_diag = L_task + lambda_b * Bias_soft."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..fairness.bias import bias_gap, diagnostic_loss
from .model import PhenoClassifier
from .predict import make_loader, predict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one classifier training run.

    Attributes:
        epochs: Passes over the training data.
        batch_size: Images per step.
        learning_rate: AdamW learning rate, decayed to 0 by a cosine schedule over all steps.
        weight_decay: AdamW weight decay.
        lambda_bias: lambda_b, the weight of Bias_soft; 0 trains on the task loss alone.
        seed: Fixes the shuffling order and the dropout masks (the global torch RNG is restored afterwards).
        device: Torch device for the model and batches.
        progress: Show a tqdm progress bar per epoch.
        min_group_size: Groups with fewer validation images are flagged in the validation bias report.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lambda_bias: float = 0.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    min_group_size: int = 20

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid {name} {getattr(self, name)}: it must be at least 1.")
        if self.learning_rate <= 0:
            raise ValueError(f"Invalid learning_rate {self.learning_rate}: it must be > 0.")
        if self.lambda_bias < 0:
            raise ValueError(f"Invalid lambda_bias {self.lambda_bias}: it must be >= 0.")


@dataclass
class TrainHistory:
    """Per-epoch records: ``epoch``, ``loss``, ``task_loss``, ``bias_soft`` (training means), and with
    validation data ``val_loss``, ``val_accuracy`` and ``val_bias_gap``."""

    config: dict
    epochs: list[dict] = field(default_factory=list)

    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def evaluate_classifier(model: PhenoClassifier, dataset: Dataset, *, batch_size: int = 64, min_group_size: int = 20, device: str = "cpu") -> dict:
    """Return the loss, accuracy and hard bias gap of the model (dropout off) on ``dataset``.

    Accuracy is the per-image accuracy averaged over images: 1/0 for the argmax class (single-label) or the
    fraction of labels right at threshold 0.5 (multi-label).
    """
    outputs = predict(model, dataset, batch_size=batch_size, device=device)
    report = bias_gap(
        outputs.hard_predictions().numpy(),
        (outputs.targets.long() if outputs.multi_label else outputs.targets).numpy(),
        outputs.group_name_list(),
        min_group_size=min_group_size,
    )
    correct = outputs.hard_predictions() == (outputs.targets.long() if outputs.multi_label else outputs.targets)
    accuracy = correct.float().mean(dim=1) if correct.ndim == 2 else correct.float()
    return {
        "loss": float(model.task_loss(outputs.logits, outputs.targets)),
        "accuracy": float(accuracy.mean()),
        "bias_gap": report.gap,
        "worst_group": report.worst_group,
        "worst_group_accuracy": report.worst_accuracy,
        "group_accuracy": report.group_accuracy,
        "small_groups": report.small_groups,
    }


def train_classifier(
    model: PhenoClassifier,
    train_data: Dataset,
    *,
    config: TrainConfig = TrainConfig(),
    val_data: Dataset | None = None,
) -> TrainHistory:
    """Train ``model`` with AdamW on L_diag = L_task + lambda_b * Bias_soft.

    Args:
        model: The classifier; trained in place.
        train_data: A ``PhenoTorchDataset`` with ``value_range="0,1"``, or its concatenation with synthetic
            images from :func:`phenodiff.classifier.with_synthetic`.
        config: Training settings.
        val_data: Evaluated after every epoch when given.

    Returns:
        The per-epoch history.
    """
    device = torch.device(config.device)
    model.to(device)
    # A last batch of one image would break BatchNorm in training mode, so incomplete batches are dropped
    # whenever there is at least one full batch.
    loader = make_loader(train_data, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         drop_last=len(train_data) > config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    history = TrainHistory(config=asdict(config))

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for epoch in range(1, config.epochs + 1):
            model.train()
            sums = {"loss": 0.0, "task_loss": 0.0, "bias_soft": 0.0}
            bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
            for batch in bar:
                pixels = batch["pixel_values"].to(device)
                targets = model.targets_from_batch(batch).to(device)
                logits = model(pixels)
                task_loss = model.task_loss(logits, targets)
                loss, bias_soft = diagnostic_loss(
                    task_loss,
                    model.probabilities(logits),
                    targets,
                    batch["group"].to(device),
                    multi_label=model.multi_label,
                    lambda_bias=config.lambda_bias,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                sums["loss"] += loss.item()
                sums["task_loss"] += task_loss.item()
                sums["bias_soft"] += bias_soft.item()
                bar.set_postfix(loss=f"{loss.item():.4f}")

            record = {"epoch": epoch, **{name: value / len(loader) for name, value in sums.items()}}
            if val_data is not None:
                scores = evaluate_classifier(model, val_data, min_group_size=config.min_group_size, device=config.device)
                record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"], val_bias_gap=scores["bias_gap"])
            history.epochs.append(record)
            logger.info("Classifier epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
    model.eval()
    return history
