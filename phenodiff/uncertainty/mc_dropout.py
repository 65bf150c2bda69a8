"""Monte-Carlo dropout predictions: the mean and variance of T stochastic passes, and the deferral score.

For an image x and T passes with independent head dropout masks, p_t(x) the probability vector of pass t:

    mu(x) = (1/T) sum_t p_t(x),    sigma^2(x) = (1/T) sum_t (p_t(x) - mu(x))^2   (per class).

The deferral score is sigma of the predicted class: sigma_c(x) with c = argmax_c mu_c(x) for a single-label
task. For a multi-label task each label is its own binary decision, whose two outcomes have the same sigma.
The score is then the largest sigma over labels, so an image is deferred when any of its labels is uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..classifier.model import PhenoClassifier
from ..classifier.predict import make_loader
from ..fairness.bias import hard_accuracy

DEFAULT_NUM_PASSES = 20


@dataclass
class MCDropoutPrediction:
    """MC-dropout outputs over a dataset, in dataset order.

    Attributes:
        mean: (N, C) mu, the mean probability vector over the passes.
        variance: (N, C) sigma^2, the population variance (divided by T) over the passes.
        num_passes: T.
        multi_label: Task type of the classifier.
        targets: (N, L) multi-hot labels or (N,) class indices.
        groups: (N,) group indices into ``group_names``.
        group_names: The dataset's group list.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    num_passes: int
    multi_label: bool
    targets: torch.Tensor
    groups: torch.Tensor
    group_names: list[str]

    def predicted(self) -> torch.Tensor:
        """Return hard predictions from mu: (N, L) 0/1 at 0.5 (multi-label) or (N,) argmax classes."""
        if self.multi_label:
            return (self.mean >= 0.5).long()
        return self.mean.argmax(dim=1)

    def uncertainty(self) -> torch.Tensor:
        """Return the deferral score, shape (N,): sigma of the predicted class (largest over labels for multi-label)."""
        std = self.variance.clamp_min(0).sqrt()
        if self.multi_label:
            return std.max(dim=1).values
        return std.gather(1, self.mean.argmax(dim=1, keepdim=True))[:, 0]

    def correctness(self) -> torch.Tensor:
        """Return each image's accuracy under mu, shape (N,): 1/0 (single-label) or the fraction of labels right."""
        return hard_accuracy(self.mean, self.targets, multi_label=self.multi_label)


@torch.no_grad()
def mc_dropout_predict(
    model: PhenoClassifier,
    dataset: Dataset,
    *,
    num_passes: int = DEFAULT_NUM_PASSES,
    batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> MCDropoutPrediction:
    """Run T = ``num_passes`` MC-dropout passes over ``dataset`` and return mu, sigma^2 and the targets.

    The trunk runs once per batch in eval mode (BatchNorm uses its running statistics) and the dropout head
    T times (:meth:`PhenoClassifier.mc_logits`). Logits are divided by ``temperature`` before the
    sigmoid or softmax, so a temperature fitted on validation data applies to every pass. ``seed`` fixes
    the dropout masks and the global torch RNG is restored afterwards.
    """
    if temperature <= 0:
        raise ValueError(f"Invalid temperature {temperature}: it must be > 0.")
    device = torch.device(device)
    means, variances, targets, groups = [], [], [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in make_loader(dataset, batch_size=batch_size):
            logits = model.mc_logits(batch["pixel_values"].to(device), num_passes=num_passes)
            probabilities = model.probabilities(logits, temperature=temperature).cpu()
            means.append(probabilities.mean(dim=0))
            variances.append(probabilities.var(dim=0, unbiased=False))
            targets.append(model.targets_from_batch(batch))
            groups.append(batch["group"])
    return MCDropoutPrediction(
        mean=torch.cat(means),
        variance=torch.cat(variances),
        num_passes=num_passes,
        multi_label=model.multi_label,
        targets=torch.cat(targets),
        groups=torch.cat(groups),
        group_names=list(dataset.groups),
    )
