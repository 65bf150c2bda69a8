"""Synthetic training sets of the protocol: phenotype requests, generation, the release filter and storage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..classifier.data import SyntheticImageDataset
from ..data.dataset import PhenoDataset
from ..evaluation.fidelity import generate_for_requests, requests_like_training, requests_to_multi_hot
from ..synthesis import SynthesisPlan
from ..utils.io import atomic_write_bytes, atomic_write_json

IMAGES_FILE = "synthetic_images.safetensors"
REQUESTS_FILE = "synthetic_requests.json"


@dataclass
class SyntheticSet:
    """Generated images (N, C, H, W) in [0, 1] with the request and the demographic group of each."""

    images: torch.Tensor
    requests: list[dict]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.requests)

    def subset(self, keep: np.ndarray) -> "SyntheticSet":
        index = np.flatnonzero(keep)
        return SyntheticSet(self.images[torch.as_tensor(index, dtype=torch.long)], [self.requests[i] for i in index],
                            [self.groups[i] for i in index])

    def save(self, folder: str | Path) -> None:
        """Write the images as uint8 safetensors and the requests as JSON, each atomically."""
        folder = Path(folder)
        pixels = (self.images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        atomic_write_bytes(folder / IMAGES_FILE, safetensors_bytes({"images": pixels}))
        atomic_write_json(folder / REQUESTS_FILE, {"requests": self.requests, "groups": self.groups})

    @classmethod
    def load(cls, folder: str | Path) -> "SyntheticSet":
        folder = Path(folder)
        images = load_file(str(folder / IMAGES_FILE))["images"].float() / 255.0
        stored = json.loads((folder / REQUESTS_FILE).read_text(encoding="utf-8"))
        return cls(images, stored["requests"], stored["groups"])

    def to_dataset(self, vocabulary: list[str], group_names: list[str]) -> SyntheticImageDataset:
        """Wrap the images for the classifier; ``group_names`` is the real training set's group list."""
        sexes = {"female": 0, "male": 1}
        ages = [float("nan") if r["age"] is None else float(r["age"]) for r in self.requests]
        return SyntheticImageDataset(
            pixel_values=self.images,
            pathology=requests_to_multi_hot(self.requests, vocabulary),
            groups=self.groups,
            group_names=group_names,
            age=torch.tensor(ages),
            sex=torch.tensor([sexes.get(r["sex"], 2) for r in self.requests]),
        )


def requests_from_plan(plan: SynthesisPlan, dataset: PhenoDataset, *, seed: int) -> tuple[list[dict], list[str]]:
    """Turn each planned cell into requests: the cell's sex and label, ages uniform in the cell's age band.

    Each request keeps its cell's label name under ``cell``, so the realised counts can be compared with the plan.
    """
    schema = dataset.schema
    rng = np.random.default_rng(seed)
    requests, groups = [], []
    for row in plan.table.itertuples(index=False):
        low = max(float(row.age_min), schema.age.min)
        high = min(float(row.age_max), schema.age.max)
        for age in rng.uniform(low, high, size=int(row.synthetic)):
            labels = list(row.pathology)
            requests.append({"age": float(age), "sex": row.sex,
                             "pathology": labels if schema.pathology.multi_label else labels[0], "cell": str(row.label)})
            groups.append(str(row.group))
    return requests, groups


def generate_set(pipeline, requests: list[dict], groups: list[str], *, settings, seed: int) -> SyntheticSet:
    """Generate one image per request with the protocol's sampler settings."""
    if not requests:
        channels, size = pipeline.vae.config.in_channels, pipeline.vae.config.sample_size
        return SyntheticSet(torch.zeros(0, channels, size, size), [], [])
    images = generate_for_requests(pipeline, requests, batch_size=settings.batch_size, num_inference_steps=settings.num_inference_steps,
                                   guidance_scale=settings.guidance_scale, seed=seed)
    return SyntheticSet(images, requests, groups)
