"""Synthetic images as a dataset that yields the same items as ``PhenoTorchDataset``, and their concatenation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..data.torch_dataset import PhenoTorchDataset


class SyntheticImageDataset(Dataset):
    """Generated images with the phenotypes they were generated for.

    Items have the keys of ``PhenoTorchDataset`` items that the classifier reads: ``pixel_values``,
    ``pathology``, ``label``, ``group``, plus ``age``, ``sex`` and ``index`` so that the default collate
    function can stack real and synthetic items in one batch.

    Args:
        pixel_values: (N, C, H, W) float images in the value range of the real dataset they join.
        pathology: (N, L) multi-hot labels over the schema vocabulary.
        groups: N group names; each must be in ``group_names``.
        group_names: The group list of the real dataset (``PhenoTorchDataset.groups``), so both use the
            same group indices.
        age: (N,) ages in years; NaN where unknown (the default).
        sex: (N,) indices into ``("female", "male", "unknown")``; 2 (unknown) by default.
    """

    def __init__(
        self,
        *,
        pixel_values: torch.Tensor,
        pathology: torch.Tensor,
        groups: Sequence[str],
        group_names: Sequence[str],
        age: torch.Tensor | None = None,
        sex: torch.Tensor | None = None,
    ):
        count = pixel_values.shape[0]
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must have shape (N, C, H, W), got {tuple(pixel_values.shape)}.")
        if pathology.ndim != 2 or pathology.shape[0] != count:
            raise ValueError(f"pathology must have shape ({count}, L), got {tuple(pathology.shape)}.")
        if len(groups) != count:
            raise ValueError(f"groups has {len(groups)} entries for {count} images.")
        index = {name: i for i, name in enumerate(group_names)}
        unknown = sorted(set(groups) - set(index))
        if unknown:
            raise ValueError(f"Unknown group(s) {unknown[:5]}; valid groups are {list(group_names)}.")

        self.groups = list(group_names)
        self.pixel_values = pixel_values.float()
        self.pathology = pathology.float()
        has_label = self.pathology.sum(dim=1) > 0
        self.label = torch.where(has_label, self.pathology.argmax(dim=1), torch.full((count,), -1))
        self.group = torch.tensor([index[name] for name in groups], dtype=torch.long)
        self.age = age.float() if age is not None else torch.full((count,), float("nan"))
        self.sex = sex.long() if sex is not None else torch.full((count,), 2, dtype=torch.long)

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.pixel_values[index],
            "age": self.age[index],
            "sex": self.sex[index],
            "pathology": self.pathology[index],
            "label": self.label[index],
            "group": self.group[index],
            "index": torch.tensor(index),
        }


def with_synthetic(real: PhenoTorchDataset, synthetic: SyntheticImageDataset | None) -> Dataset:
    """Concatenate real and synthetic training images after checking that they agree.

    Both must use the same group list and the same image shape. The returned dataset has a ``groups``
    attribute like its parts. With ``synthetic=None`` the real dataset is returned unchanged.
    """
    if synthetic is None:
        return real
    if list(real.groups) != list(synthetic.groups):
        raise ValueError(
            f"The synthetic dataset uses groups {synthetic.groups}, but the real one uses {real.groups}; "
            "build it with group_names=real.groups."
        )
    if real.pixel_values.shape[1:] != synthetic.pixel_values.shape[1:]:
        raise ValueError(
            f"Synthetic images have shape {tuple(synthetic.pixel_values.shape[1:])} but real images "
            f"{tuple(real.pixel_values.shape[1:])}; resize them to the real resolution."
        )
    if real.pathology.shape[1] != synthetic.pathology.shape[1]:
        raise ValueError(
            f"Synthetic labels have {synthetic.pathology.shape[1]} columns but the schema vocabulary has {real.pathology.shape[1]}."
        )
    combined = ConcatDataset([real, synthetic])
    combined.groups = list(real.groups)
    return combined
