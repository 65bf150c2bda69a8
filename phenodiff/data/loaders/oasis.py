"""OASIS-1 cross-sectional MRI slices.

Two metadata layouts are accepted: one row per slice with a ``file_name`` column (the imagefolder
convention), or the original ``oasis_cross-sectional.csv`` with one row per session (ID, M/F, Age, CDR), in
which case every image whose name starts with ``<ID>_`` in the image folder becomes a slice of that session.
The label is ``demented`` when CDR > 0. Sessions without a CDR (the young controls of OASIS-1) are dropped
as "invalid label value".
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..dataset import PhenoDataset
from ..schema import PhenotypeSchema
from .tabular import ErrorPolicy, _metadata_path, build_dataset, read_metadata_csv

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _expand_sessions(frame: pd.DataFrame, schema: PhenotypeSchema, data_dir: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Turn one row per session into one row per slice file found in the image folder."""
    image_dir = data_dir / schema.image_dir
    by_session: dict[str, list[str]] = {}
    if image_dir.is_dir():
        for name in sorted(os.listdir(image_dir)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                by_session.setdefault(name.rsplit("_", 1)[0], []).append(name)
    suffixes = dict(schema.options.get("view_suffixes", {}))
    rows, names = [], []
    id_column = schema.columns["patient_id"]
    for _, row in frame.iterrows():
        files = by_session.get(str(row[id_column]).strip(), [])
        # A session with no slice on disk keeps one row with its expected name, so it is reported as missing.
        for name in files or [f"{row[id_column]}_a.jpg"]:
            slice_row = row.copy()
            stem = os.path.splitext(name)[0]
            view = suffixes.get(stem.rsplit("_", 1)[-1], "")
            for extra in schema.extras.values():
                if extra.column not in frame.columns:
                    slice_row[extra.column] = view
            rows.append(slice_row)
            names.append(name)
    expanded = pd.DataFrame(rows).reset_index(drop=True)
    return expanded, pd.Series(names)


def load_oasis1(
    schema: PhenotypeSchema,
    data_dir: str | os.PathLike | None = None,
    *,
    metadata_file: str | os.PathLike | None = None,
    check_images: bool = True,
    errors: ErrorPolicy = "drop",
    num_workers: int | None = None,
) -> PhenoDataset:
    """Load OASIS-1 slices; see the module docstring for the accepted metadata layouts."""
    metadata_path = _metadata_path(schema, data_dir, metadata_file)
    frame = read_metadata_csv(metadata_path)
    image_names = None
    if schema.columns["image"] not in frame.columns and data_dir is not None:
        frame, image_names = _expand_sessions(frame, schema, Path(data_dir))
    return build_dataset(
        frame,
        schema,
        data_dir=data_dir,
        metadata_path=metadata_path,
        check_images=check_images,
        errors=errors,
        num_workers=num_workers,
        image_names=image_names,
    )
