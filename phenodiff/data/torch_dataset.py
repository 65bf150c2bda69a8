"""A ``torch.utils.data.Dataset`` over the records of one split, for the generator and the classifier."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .dataset import PhenoDataset
from .schema import SEXES


def sex_index(sex: str) -> int:
    """Index of a canonical sex in :data:`phenodiff.data.schema.SEXES` (female 0, male 1, unknown 2)."""
    return SEXES.index(sex)


# Resized images already read in this process, so that the stages of one run read each file once. The key
# includes the file's modification time, so a rewritten file is read again.
_RESIZED: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_RESIZED_MAX_BYTES = 1 << 30
_resized_bytes = 0


def _cache_key(row, resolution: int, channels: int) -> tuple | None:
    path = row["image_path"]
    if not isinstance(path, str):
        return None
    try:
        modified = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return (path, modified, str(row.get("slice_axis")), str(row.get("slice_index")), int(resolution), int(channels))


def _remember(key: tuple | None, image: torch.Tensor) -> None:
    global _resized_bytes
    if key is None:
        return
    _RESIZED[key] = image
    _resized_bytes += image.numel() * image.element_size()
    while _resized_bytes > _RESIZED_MAX_BYTES and _RESIZED:
        _, old = _RESIZED.popitem(last=False)
        _resized_bytes -= old.numel() * old.element_size()


class PhenoTorchDataset(torch.utils.data.Dataset):
    """Images resized to ``resolution`` and their phenotypes, preloaded into memory.

    Each item is a dictionary:

    - ``pixel_values``: float32 (C, resolution, resolution), in [-1, 1] (``value_range="-1,1"``, the
      diffusers convention) or [0, 1] (``"0,1"``);
    - ``age``: float32 scalar in years, NaN when missing;
    - ``sex``: int64 index into ``("female", "male", "unknown")``;
    - ``pathology``: float32 multi-hot vector over the schema vocabulary;
    - ``label``: int64 index of the single label (single-label schemas), or of the first present label
      with -1 for no finding (multi-label schemas);
    - ``group``: int64 index into :attr:`groups`;
    - ``index``: position of the record in ``dataset.records``.

    Args:
        dataset: A loaded dataset. With ``split`` given, it must carry a ``split`` column (see
            :func:`phenodiff.data.apply_split`).
        split: ``train``, ``val``, ``test`` or None for every record.
        resolution: Side length of the square output images (bilinear resize with antialiasing).
        value_range: ``"-1,1"`` or ``"0,1"``.
    """

    def __init__(
        self,
        dataset: PhenoDataset,
        split: str | None = "train",
        *,
        resolution: int = 32,
        value_range: Literal["-1,1", "0,1"] = "-1,1",
        progress: bool = True,
    ):
        if split is not None:
            if "split" not in dataset.records:
                raise ValueError("The dataset has no 'split' column; apply a split manifest first (phenodiff.data.load_or_make_split).")
            dataset = dataset.subset((dataset.records["split"] == split).to_numpy())
        if len(dataset) == 0:
            raise ValueError(f"Split {split!r} of dataset {dataset.name!r} is empty.")
        if dataset.pixel_resolution is not None and dataset.pixel_resolution != resolution:
            raise ValueError(
                f"The image array of dataset {dataset.name!r} was exported at {dataset.pixel_resolution}x{dataset.pixel_resolution}, "
                f"but resolution {resolution} was requested; export it again with --resolution {resolution}."
            )
        if value_range not in ("-1,1", "0,1"):
            raise ValueError(f"value_range must be '-1,1' or '0,1', got {value_range!r}.")
        self.dataset = dataset
        self.schema = dataset.schema
        self.resolution = resolution
        self.groups = sorted(set(dataset.schema.declared_groups()) | set(dataset.records["group"]))

        images = []
        for i in tqdm(range(len(dataset)), desc=f"Loading {dataset.name} {split or 'all'}", disable=not progress or len(dataset) < 500, leave=False):
            key = _cache_key(dataset.records.iloc[i], resolution, dataset.schema.channels)
            image = _RESIZED.get(key)
            if image is None:
                image = self._resize(dataset.load_image(i))
                _remember(key, image)
            images.append(image)
        pixels = torch.stack(images)
        self.pixel_values = pixels * 2.0 - 1.0 if value_range == "-1,1" else pixels

        records = dataset.records
        self.age = torch.tensor(records["age"].to_numpy(dtype=np.float32))
        self.sex = torch.tensor([sex_index(s) for s in records["sex"]], dtype=torch.long)
        self.pathology = torch.tensor(dataset.label_matrix(), dtype=torch.float32)
        first = [int(np.argmax(row)) if row.any() else -1 for row in dataset.label_matrix()]
        self.label = torch.tensor(first, dtype=torch.long)
        group_index = {g: i for i, g in enumerate(self.groups)}
        self.group = torch.tensor([group_index[g] for g in records["group"]], dtype=torch.long)
        # Value indices of the extra attributes with a declared vocabulary, -1 where a record has no valid value.
        self.extras = {
            name: torch.tensor([spec.values.index(v) if v in spec.values else -1 for v in records[name].astype(str)], dtype=torch.long)
            for name, spec in dataset.schema.extras.items()
            if spec.values and name in records
        }

    def _resize(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if tensor.shape[-2:] != (self.resolution, self.resolution):
            tensor = F.interpolate(tensor[None], size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)[0]
        return tensor.clamp(0.0, 1.0)

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
