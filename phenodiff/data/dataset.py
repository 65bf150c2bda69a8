"""The in-memory form of a loaded dataset: validated phenotype records plus what was dropped and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .images import is_nifti, normalize_image, read_image, read_nifti_slice
from .schema import PhenotypeSchema

# Columns every records table has, in this order; extra attributes follow.
RECORD_COLUMNS = ("file_name", "image_path", "patient_id", "age", "sex", "pathology", "group", "source_line")


@dataclass
class PhenoDataset:
    """Validated records of one dataset.

    Attributes:
        schema: The phenotype schema the records were validated against.
        records: One row per image with the columns ``file_name`` (unique key, relative to ``root``),
            ``image_path`` (absolute path or None in metadata-only mode), ``patient_id``, ``age`` (float
            years, NaN when missing), ``sex`` (``female``/``male``/``unknown``), ``pathology`` (tuple of
            vocabulary labels, empty for no finding), ``group``, ``source_line`` (CSV line number), one
            column per extra attribute, and, for NIfTI slices, ``slice_axis`` and ``slice_index``.
        dropped: One row per rejected CSV line with ``source_line``, ``file_name``, ``reason`` and ``value``.
        conversions: Per-image notes of channel or alpha conversions made while verifying the images,
            keyed by ``file_name`` (absent when nothing was converted).
        root: The data folder that ``file_name`` is relative to.
        metadata_path: The CSV the records came from.
    """

    schema: PhenotypeSchema
    records: pd.DataFrame
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["source_line", "file_name", "reason", "value"]))
    conversions: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    metadata_path: Path | None = None
    pixels: Any = None  # (N, C, R, R) images of a preprocessed array file, indexed by records["array_index"]
    pixel_resolution: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def images_checked(self) -> bool:
        return bool(len(self.records)) and (self.pixels is not None or self.records["image_path"].notna().all())

    # ------------------------------------------------------------------ labels
    def label_matrix(self) -> np.ndarray:
        """Return a multi-hot (N, L) uint8 matrix over ``schema.pathology.vocabulary``."""
        vocabulary = {label: i for i, label in enumerate(self.schema.pathology.vocabulary)}
        matrix = np.zeros((len(self.records), len(vocabulary)), dtype=np.uint8)
        for row, labels in enumerate(self.records["pathology"]):
            for label in labels:
                matrix[row, vocabulary[label]] = 1
        return matrix

    def label_strings(self) -> pd.Series:
        """One string per record for display and stratification: labels joined with '|', or the no-finding name."""
        none_name = self.schema.pathology.none_label or "no finding"
        return self.records["pathology"].map(lambda labels: "|".join(labels) if labels else none_name)

    def primary_labels(self) -> pd.Series:
        """The first label of each record in vocabulary order, or the no-finding name; used to stratify splits."""
        none_name = self.schema.pathology.none_label or "no finding"
        return self.records["pathology"].map(lambda labels: labels[0] if labels else none_name)

    # ------------------------------------------------------------------ images
    def load_image(self, index: int, *, normalize: bool = True) -> np.ndarray:
        """Read the image of record ``index``: (H, W) or (H, W, 3), float32 in [0, 1] when ``normalize``."""
        row = self.records.iloc[index]
        if self.pixels is not None:
            array = self.pixels[int(row["array_index"])].float().numpy()
            return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
        if row["image_path"] is None or (isinstance(row["image_path"], float) and np.isnan(row["image_path"])):
            raise ValueError(f"Dataset {self.name!r} was loaded without images (metadata only); reload it with a data folder.")
        if is_nifti(row["image_path"]):
            array = read_nifti_slice(row["image_path"], axis=int(row["slice_axis"]), index=int(row["slice_index"]))
            if self.schema.channels == 3:
                array = np.repeat(array[..., None], 3, axis=2)
        else:
            array, _ = read_image(row["image_path"], channels=self.schema.channels)
        return normalize_image(array) if normalize else array

    def subset(self, mask: Any) -> "PhenoDataset":
        """Return a dataset with the records selected by a boolean mask or index array (same schema)."""
        records = self.records.loc[mask] if isinstance(mask, pd.Series) else self.records.iloc[mask]
        return PhenoDataset(
            schema=self.schema,
            records=records.reset_index(drop=True),
            dropped=self.dropped,
            conversions=self.conversions,
            root=self.root,
            metadata_path=self.metadata_path,
            pixels=self.pixels,
            pixel_resolution=self.pixel_resolution,
        )

    def to_hf_dataset(self):
        """Return a ``datasets.Dataset`` with an ``image`` feature (decoded lazily by ``datasets``) and the phenotype columns.

        NIfTI slices are not representable as image files and are rejected; use :meth:`load_image` for them.
        """
        import datasets

        if self.records["image_path"].isna().any():
            raise ValueError(f"Dataset {self.name!r} was loaded without images (metadata only); reload it with a data folder.")
        if self.records["image_path"].map(is_nifti).any():
            raise ValueError("NIfTI slices cannot be exported as a datasets.Image column; use PhenoDataset.load_image.")
        table = {
            "image": self.records["image_path"].astype(str).tolist(),
            "file_name": self.records["file_name"].tolist(),
            "patient_id": self.records["patient_id"].astype(str).tolist(),
            "age": self.records["age"].astype(float).tolist(),
            "sex": self.records["sex"].tolist(),
            "pathology": [list(labels) for labels in self.records["pathology"]],
            "group": self.records["group"].tolist(),
        }
        for extra in self.schema.extras:
            table[extra] = self.records[extra].astype(str).tolist()
        return datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
