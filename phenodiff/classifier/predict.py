"""Deterministic predictions of a classifier over a dataset, with the targets and groups of each image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .model import PhenoClassifier


@dataclass
class Predictions:
    """Outputs of one pass over a dataset, in dataset order.

    Attributes:
        logits: (N, C) logits.
        probabilities: (N, C) sigmoid (multi-label) or softmax (single-label) of ``logits / temperature``.
        targets: (N, L) multi-hot labels or (N,) class indices.
        groups: (N,) group indices into ``group_names``.
        group_names: The dataset's group list.
        multi_label: Task type of the classifier.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor
    group_names: list[str]
    multi_label: bool

    def hard_predictions(self) -> torch.Tensor:
        """Return (N, L) 0/1 labels at threshold 0.5 (multi-label) or (N,) argmax classes."""
        if self.multi_label:
            return (self.probabilities >= 0.5).long()
        return self.probabilities.argmax(dim=1)

    def group_name_list(self) -> list[str]:
        return [self.group_names[int(i)] for i in self.groups]


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """Return a DataLoader whose shuffling order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                      drop_last=drop_last)


@torch.no_grad()
def predict(
    model: PhenoClassifier,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
) -> Predictions:
    """Run the model once in eval mode (dropout off) over ``dataset`` and collect its outputs.

    ``dataset`` yields ``PhenoTorchDataset``-style items and has a ``groups`` attribute.
    """
    if temperature <= 0:
        raise ValueError(f"Invalid temperature {temperature}: it must be > 0.")
    was_training = model.training
    model.eval()
    logits, targets, groups = [], [], []
    try:
        for batch in make_loader(dataset, batch_size=batch_size):
            logits.append(model(batch["pixel_values"].to(device)).cpu())
            targets.append(model.targets_from_batch(batch))
            groups.append(batch["group"])
    finally:
        model.train(was_training)
    all_logits = torch.cat(logits)
    return Predictions(
        logits=all_logits,
        probabilities=model.probabilities(all_logits, temperature=temperature),
        targets=torch.cat(targets),
        groups=torch.cat(groups),
        group_names=list(dataset.groups),
        multi_label=model.multi_label,
    )
