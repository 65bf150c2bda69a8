"""A dataset as one preprocessed file: images resized to one resolution plus the validated records.

A machine that trains the generators (for example a GPU machine without the image folders) reads this
file instead of the folders. The images are stored as float16 in [0, 1], (N, C, R, R), in a safetensors
file whose metadata stores the records as JSON, so the file carries no executable content.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..utils.io import atomic_write_bytes
from .dataset import PhenoDataset
from .schema import PhenotypeSchema

ARRAY_FORMAT = "phenodiff-image-array"
ARRAY_VERSION = "1"


def export_image_array(dataset: PhenoDataset, path: str | Path, *, resolution: int) -> Path:
    """Resize every image of ``dataset`` to ``resolution`` and write the images and records to ``path`` atomically."""
    from .torch_dataset import PhenoTorchDataset

    images = PhenoTorchDataset(dataset, None, resolution=resolution, value_range="0,1")
    records = dataset.records.drop(columns=[c for c in ("image_path", "split") if c in dataset.records]).copy()
    records["pathology"] = records["pathology"].map(list)
    metadata = {
        "format": ARRAY_FORMAT,
        "version": ARRAY_VERSION,
        "schema": dataset.schema.name,
        "resolution": str(resolution),
        "records": records.to_json(orient="records"),
    }
    return atomic_write_bytes(path, safetensors_bytes({"pixels": images.pixel_values.to(torch.float16).contiguous()}, metadata=metadata))


def load_image_array(path: str | Path, schema: PhenotypeSchema) -> PhenoDataset:
    """Read a file written by :func:`export_image_array` as a dataset whose images come from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image array file not found: {path}; write it with 'phenodiff export-array'.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != ARRAY_FORMAT:
            raise ValueError(f"{path} is not a phenodiff image array (format {metadata.get('format')!r}); write it with 'phenodiff export-array'.")
        pixels = handle.get_tensor("pixels")
    if metadata["schema"] != schema.name:
        raise ValueError(f"{path} contains dataset {metadata['schema']!r}, but the config names {schema.name!r}; pass the matching file.")
    records = pd.DataFrame(json.loads(metadata["records"]))
    records["pathology"] = records["pathology"].map(tuple)
    records["age"] = records["age"].astype(float)
    records["image_path"] = None
    records["array_index"] = np.arange(len(records))
    return PhenoDataset(schema=schema, records=records, root=path.parent, metadata_path=path, pixels=pixels,
                        pixel_resolution=int(metadata["resolution"]))
