"""Dataset loaders. :func:`load_pheno_dataset` picks one from the schema's ``loader`` entry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

from ..dataset import PhenoDataset
from ..schema import PhenotypeSchema, resolve_schema
from .nifti import load_nifti
from .oasis import load_oasis1
from .tabular import ErrorPolicy, load_tabular

# ChestX-ray14, HAM10000 and any imagefolder-style folder share the tabular loader: their differences
# (column names, age format, label separator, image suffix) are declared in their schemas.
LOADERS: dict[str, Callable[..., PhenoDataset]] = {
    "tabular": load_tabular,
    "imagefolder": load_tabular,
    "chestxray14": load_tabular,
    "ham10000": load_tabular,
    "oasis1": load_oasis1,
    "nifti": load_nifti,
}


def load_pheno_dataset(
    schema: PhenotypeSchema | str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    metadata_file: str | os.PathLike | None = None,
    column_mapping: Mapping[str, str] | None = None,
    check_images: bool = True,
    errors: ErrorPolicy = "drop",
    num_workers: int | None = None,
) -> PhenoDataset:
    """Load and validate a dataset.

    Args:
        schema: A :class:`PhenotypeSchema`, a built-in schema name (``chestxray14``, ``ham10000``,
            ``oasis1``, ``brats``, ``phantom``) or the path of a schema YAML file.
        data_dir: Folder with the metadata CSV and the images. ``None`` validates metadata only.
        metadata_file: Metadata CSV (may be gzip-compressed); defaults to the schema's ``metadata_file``.
        column_mapping: Overrides of the schema's columns, ``{field: csv_column}``; fields are ``image``,
            ``patient_id``, ``age``, ``sex``, ``pathology`` and ``extra:NAME``.
        check_images: Decode every image to drop missing and corrupt files.
        errors: ``"drop"`` (record and skip invalid rows) or ``"raise"`` (raise on the first).
        num_workers: Threads for image checks.
    """
    schema = resolve_schema(schema)
    if column_mapping:
        schema = schema.with_columns(column_mapping)
    if schema.loader not in LOADERS:
        raise ValueError(f"Schema {schema.name!r} names loader {schema.loader!r}; available loaders: {sorted(LOADERS)}.")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"Data folder not found: {data_dir}.")
    return LOADERS[schema.loader](
        schema, data_dir, metadata_file=metadata_file, check_images=check_images, errors=errors, num_workers=num_workers
    )


__all__ = ["LOADERS", "load_pheno_dataset", "load_tabular", "load_oasis1", "load_nifti"]
