"""The diagnostic classifier: a timm backbone as feature trunk plus a dropout head used for MC dropout.

Dropout sits only in this module's head (``nn.Dropout`` followed by ``nn.Linear``), and the trunk is built
with ``drop_rate=0``. Two facts of timm 1.0.31, checked by reading its source and running it, decide this.
First, ResNet and EfficientNet apply their head dropout functionally (``F.dropout(...,
training=self.training)`` in ``forward_head``), so switching "the dropout modules" to train mode leaves
them deterministic, while ConvNeXt has real ``nn.Dropout`` modules. A head of our own behaves the same for
every backbone. Second, because the trunk has no randomness in eval mode, MC dropout runs the trunk once
and only the head T times (:meth:`PhenoClassifier.mc_logits`). ``benchmarks/mc_dropout.py`` compares its
time with one pass.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import timm
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..data.schema import PhenotypeSchema
from ..utils.io import atomic_write_bytes, atomic_write_json

TASKS = ("multi_label", "single_label")
SUPPORTED_BACKBONES = ("resnet18", "efficientnet_b0", "convnext_atto")
CONFIG_FILE = "classifier_config.json"
WEIGHTS_FILE = "classifier.safetensors"


def task_from_schema(schema: PhenotypeSchema) -> tuple[str, int]:
    """Return ``(task, num_outputs)`` for a schema: multi-label (sigmoid, BCE) or single-label (softmax, CE)."""
    task = "multi_label" if schema.pathology.multi_label else "single_label"
    return task, len(schema.pathology.vocabulary)


class PhenoClassifier(nn.Module):
    """A timm trunk (``num_classes=0``, pooled features) followed by ``nn.Dropout`` and ``nn.Linear``.

    Args:
        num_outputs: Number of labels (multi-label) or classes (single-label).
        task: ``multi_label`` or ``single_label``.
        backbone: A timm model name. :data:`SUPPORTED_BACKBONES` are the ones tested; any timm model that
            accepts ``num_classes=0``, ``in_chans`` and ``drop_rate`` works the same way.
        in_chans: 1 for grayscale, 3 for RGB.
        dropout: Head dropout probability p in [0, 1).
        backbone_kwargs: Extra keyword arguments for ``timm.create_model``, for example
            ``{"channels": (16, 32, 64, 128)}`` for a narrow ResNet or ``{"dims": (16, 32, 64, 128)}`` for a
            narrow ConvNeXt. ``drop_rate`` is not allowed here, because dropout belongs to the head.
        seed: When given, the weights are initialised from this seed without changing the global RNG.

    Weights are always random (``pretrained=False``): nothing is downloaded.
    """

    def __init__(
        self,
        *,
        num_outputs: int,
        task: Literal["multi_label", "single_label"] = "multi_label",
        backbone: str = "resnet18",
        in_chans: int = 1,
        dropout: float = 0.2,
        backbone_kwargs: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"Invalid task {task!r}; valid options are {list(TASKS)}.")
        if num_outputs < 1:
            raise ValueError(f"Invalid num_outputs {num_outputs}: it must be at least 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Invalid dropout {dropout}: it must be in [0, 1).")
        if in_chans not in (1, 3):
            raise ValueError(f"Invalid in_chans {in_chans}: use 1 (grayscale) or 3 (RGB).")
        backbone_kwargs = dict(backbone_kwargs or {})
        if "drop_rate" in backbone_kwargs:
            raise ValueError("backbone_kwargs must not set drop_rate: set the head dropout with dropout= instead.")
        if not timm.is_model(backbone):
            raise ValueError(f"Unknown timm backbone {backbone!r}; the tested ones are {list(SUPPORTED_BACKBONES)}.")

        self.config = {
            "num_outputs": num_outputs,
            "task": task,
            "backbone": backbone,
            "in_chans": in_chans,
            "dropout": dropout,
            "backbone_kwargs": backbone_kwargs,
        }
        self.task = task
        self.num_outputs = num_outputs
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.trunk = timm.create_model(
                backbone, pretrained=False, num_classes=0, in_chans=in_chans, drop_rate=0.0, **backbone_kwargs
            )
            self.dropout = nn.Dropout(p=dropout)
            self.classifier = nn.Linear(self.trunk.num_features, num_outputs)

    @classmethod
    def from_schema(cls, schema: PhenotypeSchema, **kwargs: Any) -> "PhenoClassifier":
        """Build a classifier whose task, outputs and input channels follow the schema."""
        task, num_outputs = task_from_schema(schema)
        return cls(num_outputs=num_outputs, task=task, in_chans=schema.channels, **kwargs)

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the trunk's pooled features, shape (B, F)."""
        return self.trunk(pixel_values)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Return logits from features: dropout (active in train mode), then the linear layer."""
        return self.classifier(self.dropout(features))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return logits, shape (B, num_outputs), for images of shape (B, C, H, W)."""
        return self.head(self.features(pixel_values))

    def probabilities(self, logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        """Turn logits into probabilities: sigmoid per label (multi-label) or softmax (single-label)."""
        scaled = logits / temperature
        return torch.sigmoid(scaled) if self.multi_label else torch.softmax(scaled, dim=-1)

    def task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean binary cross-entropy (multi-label, targets (B, L)) or cross-entropy (targets (B,))."""
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return nn.functional.cross_entropy(logits, targets.long())

    def targets_from_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Select the targets of a ``PhenoTorchDataset`` batch: ``pathology`` (multi-label) or ``label``."""
        if self.multi_label:
            return batch["pathology"]
        labels = batch["label"]
        if bool((labels < 0).any()):
            raise ValueError("A single-label batch contains records without a label (label -1); drop them before training.")
        return labels

    @contextlib.contextmanager
    def _mc_mode(self) -> Iterator[None]:
        # Trunk in eval mode (BatchNorm uses running statistics), head dropout in train mode.
        was_training = self.training
        self.eval()
        self.dropout.train()
        try:
            yield
        finally:
            self.train(was_training)

    def mc_logits(self, pixel_values: torch.Tensor, *, num_passes: int) -> torch.Tensor:
        """Return logits of ``num_passes`` MC-dropout passes, shape (T, B, num_outputs).

        The trunk runs once in eval mode. Its features are repeated T times and each copy gets an
        independent dropout mask in the head. This gives the same distribution as T full passes, because
        the trunk has no randomness in eval mode. With ``dropout=0`` all passes are equal.
        """
        if num_passes < 1:
            raise ValueError(f"Invalid num_passes {num_passes}: it must be at least 1.")
        with self._mc_mode():
            features = self.features(pixel_values)
            repeated = features.unsqueeze(0).expand(num_passes, *features.shape).contiguous()
            return self.head(repeated)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the config (JSON) and the weights (safetensors) into ``directory``, each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(state))
        atomic_write_json(directory / CONFIG_FILE, self.config)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "PhenoClassifier":
        """Rebuild a classifier written by :meth:`save`."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}; it is not a saved PhenoClassifier folder.")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = cls(**config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model
