"""Validate a metadata table against a phenotype schema and build a :class:`PhenoDataset`.

Every dataset loader ends here. Rows that cannot be used are dropped and recorded with their CSV line, the
offending value and a reason from :data:`REJECTION_FIXES`; with ``errors="raise"`` the first such row
raises :class:`InvalidRecordError` instead. A missing column always raises, because no row could be read.
"""

from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..dataset import RECORD_COLUMNS, PhenoDataset
from ..errors import EmptyDatasetError, InvalidRecordError, MissingColumnError, PhenodiffDataError
from ..images import CorruptImageError, read_image
from ..schema import PhenotypeSchema

logger = logging.getLogger(__name__)

ErrorPolicy = Literal["drop", "raise"]

# Rejection reason -> what the user should do about it.
REJECTION_FIXES = {
    "missing image file name": "Fill in the image column for this row or remove the row.",
    "image path outside the data folder": "Image paths must be relative to the data folder and must not contain '..'.",
    "duplicate file name": "Each image may be listed once; remove the repeated row or give the image a unique name.",
    "invalid age": "Write the age in years as a number (e.g. 58, 58.5 or the ChestX-ray14 form '058Y'), or leave it empty if unknown.",
    "age out of range": "Correct the age, or widen 'age.min'/'age.max' in the schema if the value is real.",
    "missing age": "This schema sets age.required; fill in the age or remove the row.",
    "unknown sex value": "Map the value to female, male or unknown under 'sex.values' in the schema, or correct the row.",
    "missing label": "Fill in the pathology label (use the schema's none_label for a normal study).",
    "label not in vocabulary": "Correct the label, add it to 'pathology.vocabulary', or map it under 'pathology.aliases'.",
    "invalid label value": "The schema derives the label from a numeric column; write a number in it.",
    "missing patient id": "Fill in the patient id; splits are made by patient so every image needs one.",
    "invalid extra attribute value": "Correct the value or add it to the extra attribute's 'values' in the schema.",
    "image file not found": "Put the image file at this path, or remove its row from the metadata.",
    "corrupt image": "Replace the file with a readable copy, or remove its row from the metadata.",
    "slice out of range": "Correct the slice index or axis for this volume.",
}

MISSING_STRINGS = {"", "nan", "na", "n/a", "none", "null", "?"}
AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


class _Rejections:
    """Collects (row position, reason, value) for rows that fail validation."""

    def __init__(self, frame: pd.DataFrame, path: str, policy: ErrorPolicy):
        self.frame = frame
        self.path = path
        self.policy = policy
        self.rows: list[tuple[int, str, object]] = []
        self.rejected = np.zeros(len(frame), dtype=bool)

    def add(self, mask: np.ndarray | pd.Series, reason: str, values: pd.Series | None = None) -> None:
        mask = np.asarray(mask, dtype=bool) & ~self.rejected
        for position in np.flatnonzero(mask):
            value = None if values is None else values.iloc[position]
            self.rows.append((int(position), reason, value))
        self.rejected |= mask
        if self.policy == "raise" and self.rows:
            position, reason, value = min(self.rows)
            raise InvalidRecordError(self.path, position + 2, reason, value, REJECTION_FIXES[reason])

    def table(self, file_names: pd.Series) -> pd.DataFrame:
        rows = [
            {"source_line": position + 2, "file_name": file_names.iloc[position], "reason": reason, "value": value}
            for position, reason, value in sorted(self.rows)
        ]
        return pd.DataFrame(rows, columns=["source_line", "file_name", "reason", "value"])


def read_metadata_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a metadata CSV (optionally gzip-compressed) with every cell as a string; empty cells stay ''."""
    path = Path(path)
    if not path.is_file():
        raise PhenodiffDataError(f"Metadata file not found: {path}. Pass the folder that contains it, or its path with --metadata-file.")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=False)
    except pd.errors.EmptyDataError:
        raise PhenodiffDataError(f"Metadata file {path} is empty; it needs a header row and at least one record.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise PhenodiffDataError(f"Cannot parse metadata file {path} as CSV: {err}") from None


def parse_ages(raw: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Parse ages in years from strings such as '58', '58.5', '058Y' or '6M'.

    Returns the ages (NaN where missing or invalid), a mask of missing cells and a mask of unparseable ones.
    """
    text = raw.astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_STRINGS).to_numpy()
    parts = text.str.extract(r"^([0-9]+(?:\.[0-9]*)?)\s*([YyMmWwDd])?$")
    number = pd.to_numeric(parts[0], errors="coerce")
    factor = parts[1].str.upper().map(AGE_UNITS).fillna(1.0)
    ages = (number * factor).astype(float)
    invalid = ~missing & ages.isna().to_numpy()
    ages[missing | invalid] = np.nan
    return ages, missing, invalid


def _parse_labels(raw: str, schema: PhenotypeSchema) -> tuple[tuple[str, ...] | None, str | None]:
    """Return (labels in vocabulary order, None) or (None, rejection reason) for one raw label cell."""
    spec = schema.pathology
    text = raw.strip()
    if text.lower() in MISSING_STRINGS:
        return None, "missing label"
    pieces = [p.strip() for p in text.split(spec.separator)] if spec.multi_label else [text]
    labels = set()
    for piece in pieces:
        if spec.none_label is not None and piece == spec.none_label:
            continue
        label = spec.aliases.get(piece, piece)
        if label not in spec.vocabulary:
            return None, "label not in vocabulary"
        labels.add(label)
    if not spec.multi_label and len(labels) != 1:
        return None, "label not in vocabulary"
    return tuple(label for label in spec.vocabulary if label in labels), None


def _binarize_labels(raw: pd.Series, schema: PhenotypeSchema) -> tuple[pd.Series, np.ndarray]:
    spec = schema.pathology.binarize
    values = pd.to_numeric(raw.astype(str).str.strip(), errors="coerce")
    invalid = values.isna().to_numpy()
    labels = values.map(lambda v: (spec.above,) if v > spec.threshold else (spec.at_or_below,))
    return labels, invalid


def _check_columns(frame: pd.DataFrame, schema: PhenotypeSchema, path: str, *, skip: tuple[str, ...] = ()) -> None:
    wanted = {field: column for field, column in schema.columns.items() if field not in skip}
    wanted.update({f"extra:{name}": spec.column for name, spec in schema.extras.items()})
    missing = {field: column for field, column in wanted.items() if column not in frame.columns}
    if missing:
        raise MissingColumnError(path, missing, frame.columns)


def _verify_images(paths: list[str], channels: int, num_workers: int, desc: str) -> tuple[list[str | None], list[str]]:
    """Decode every image fully; return per-image conversion notes and per-image error reasons ('' when fine)."""

    def check(path: str) -> tuple[str | None, str]:
        if not os.path.isfile(path):
            return None, "image file not found"
        try:
            _, info = read_image(path, channels=channels)
        except CorruptImageError:
            return None, "corrupt image"
        return info.conversion, ""

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        results = list(
            tqdm(pool.map(check, paths), total=len(paths), desc=desc, unit="img", disable=len(paths) < 2000, leave=False)
        )
    return [r[0] for r in results], [r[1] for r in results]


def build_dataset(
    frame: pd.DataFrame,
    schema: PhenotypeSchema,
    *,
    data_dir: str | os.PathLike | None,
    metadata_path: str | os.PathLike,
    check_images: bool = True,
    errors: ErrorPolicy = "drop",
    num_workers: int | None = None,
    image_names: pd.Series | None = None,
) -> PhenoDataset:
    """Validate ``frame`` (all cells strings) against ``schema``.

    Args:
        frame: The metadata table as read by :func:`read_metadata_csv`.
        schema: Declares which column holds which field and the valid values.
        data_dir: Folder that image paths are relative to. ``None`` validates metadata only.
        metadata_path: Where ``frame`` came from, for messages.
        check_images: Decode every image to find missing, truncated or corrupt files (needs ``data_dir``).
        errors: ``"drop"`` records invalid rows in ``dataset.dropped``; ``"raise"`` raises on the first.
        num_workers: Threads used to decode images (defaults to the number of CPUs).
        image_names: Precomputed image names relative to ``schema.image_dir`` (used by loaders that
            derive file names themselves); by default they come from the ``image`` column.
    """
    if errors not in ("drop", "raise"):
        raise ValueError(f"errors must be 'drop' or 'raise', got {errors!r}.")
    path = str(metadata_path)
    _check_columns(frame, schema, path, skip=("image",) if image_names is not None else ())
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise EmptyDatasetError(f"{path} has a header but no records; add one row per image.")
    rejections = _Rejections(frame, path, errors)
    columns = schema.columns

    # Image file names, relative to the data folder, in POSIX form so manifests are portable.
    names = (image_names if image_names is not None else frame[columns["image"]]).astype(str).str.strip()
    rejections.add(names.eq("").to_numpy(), "missing image file name", names)
    file_names = names.map(lambda n: posixpath.normpath(posixpath.join(schema.image_dir, n + schema.image_suffix)) if n else "")
    escapes = file_names.map(lambda n: n.startswith("../") or n == ".." or n.startswith("/"))
    rejections.add(escapes.to_numpy(), "image path outside the data folder", names)

    # Age
    if "age" in columns:
        ages, age_missing, age_invalid = parse_ages(frame[columns["age"]])
        rejections.add(age_invalid, "invalid age", frame[columns["age"]])
        out_of_range = ~age_missing & ~age_invalid & ((ages < schema.age.min) | (ages > schema.age.max)).to_numpy()
        rejections.add(out_of_range, "age out of range", frame[columns["age"]])
        if schema.age.required:
            rejections.add(age_missing, "missing age", frame[columns["age"]])
    else:
        ages = pd.Series(np.nan, index=frame.index)

    # Sex
    raw_sex = frame[columns["sex"]].astype(str).str.strip()
    lowered = raw_sex.str.lower()
    sexes = lowered.map(schema.sex.values)
    sexes[lowered.isin(MISSING_STRINGS)] = "unknown"
    rejections.add(sexes.isna().to_numpy(), "unknown sex value", raw_sex)

    # Pathology
    raw_labels = frame[columns["pathology"]]
    if schema.pathology.binarize is not None:
        labels, invalid = _binarize_labels(raw_labels, schema)
        rejections.add(invalid, "invalid label value", raw_labels)
    else:
        parsed = {value: _parse_labels(value, schema) for value in raw_labels.unique()}
        labels = raw_labels.map(lambda v: parsed[v][0])
        reasons = raw_labels.map(lambda v: parsed[v][1])
        for reason in ("missing label", "label not in vocabulary"):
            rejections.add(reasons.eq(reason).to_numpy(), reason, raw_labels)

    # Patient id; without a patient column every image is its own patient.
    if "patient_id" in columns:
        patients = frame[columns["patient_id"]].astype(str).str.strip()
        rejections.add(patients.str.lower().isin(MISSING_STRINGS).to_numpy(), "missing patient id", patients)
    else:
        logger.warning(
            "%s: the schema maps no patient_id column, so every image counts as its own patient and splits are made "
            "per image. Map the patient column (--column-map patient_id=COLUMN) if patients have several images.", path
        )
        patients = file_names.copy()

    # Extra attributes
    extras = {}
    for extra_name, spec in schema.extras.items():
        values = frame[spec.column].astype(str).str.strip()
        if spec.values is not None:
            bad = ~values.isin(spec.values) & ~values.str.lower().isin(MISSING_STRINGS)
            rejections.add(bad.to_numpy(), "invalid extra attribute value", values)
        extras[extra_name] = values

    # Duplicates: the first listing of a file name wins.
    duplicated = file_names.duplicated(keep="first") & file_names.ne("")
    if duplicated.any():
        first_line = {name: position + 2 for position, name in reversed(list(enumerate(file_names)))}
        shown = file_names.map(lambda n: f"{n} (first listed on line {first_line.get(n)})")
        rejections.add(duplicated.to_numpy(), "duplicate file name", shown)

    # Images: existence and a full decode, only for rows that are otherwise valid.
    conversions: dict[str, str] = {}
    root = Path(data_dir).resolve() if data_dir is not None else None
    image_paths = pd.Series([None] * len(frame), dtype=object)
    if root is not None:
        image_paths = file_names.map(lambda n: str(root / n) if n else None)
        if check_images:
            todo = np.flatnonzero(~rejections.rejected)
            notes, problems = _verify_images(
                [image_paths.iloc[i] for i in todo], schema.channels, num_workers or os.cpu_count() or 1, f"Checking {schema.name} images"
            )
            problem_series = pd.Series("", index=frame.index)
            problem_series.iloc[todo] = problems
            for reason in ("image file not found", "corrupt image"):
                rejections.add(problem_series.eq(reason).to_numpy(), reason, image_paths)
            for i, note in zip(todo, notes):
                if note:
                    conversions[file_names.iloc[i]] = note

    keep = ~rejections.rejected
    records = pd.DataFrame(
        {
            "file_name": file_names[keep].to_numpy(),
            "image_path": image_paths[keep].to_numpy(),
            "patient_id": patients[keep].to_numpy(),
            "age": ages[keep].to_numpy(dtype=float),
            "sex": sexes[keep].to_numpy(),
            "pathology": labels[keep].to_numpy(),
            "group": "",
            "source_line": np.flatnonzero(keep) + 2,
        },
        columns=list(RECORD_COLUMNS),
    )
    for extra_name, values in extras.items():
        records[extra_name] = values[keep].to_numpy()
    records["group"] = [schema.group_of(a, s) for a, s in zip(records["age"], records["sex"])]

    dropped = rejections.table(file_names)
    if dropped.shape[0]:
        counts = dropped["reason"].value_counts().to_dict()
        logger.warning("%s: dropped %d of %d rows: %s", path, len(dropped), len(frame), counts)
    if records.empty:
        counts = dropped["reason"].value_counts().to_dict() if len(dropped) else {}
        raise EmptyDatasetError(
            f"{path}: no valid record left out of {len(frame)} row(s); reasons: {counts}. "
            "Check the column mapping and vocabulary against the file."
        )
    return PhenoDataset(
        schema=schema,
        records=records,
        dropped=dropped,
        conversions=conversions,
        root=root,
        metadata_path=Path(metadata_path),
    )


def load_tabular(
    schema: PhenotypeSchema,
    data_dir: str | os.PathLike | None = None,
    *,
    metadata_file: str | os.PathLike | None = None,
    check_images: bool = True,
    errors: ErrorPolicy = "drop",
    num_workers: int | None = None,
) -> PhenoDataset:
    """Load a dataset described by one metadata CSV with one row per image (ChestX-ray14, HAM10000, imagefolder).

    ``metadata_file`` defaults to ``schema.metadata_file`` inside ``data_dir``; a relative path is taken
    relative to ``data_dir``. Without ``data_dir`` only the metadata is validated (for example the full
    ChestX-ray14 table, whose images are not present).
    """
    metadata_path = _metadata_path(schema, data_dir, metadata_file)
    frame = read_metadata_csv(metadata_path)
    return build_dataset(
        frame,
        schema,
        data_dir=data_dir,
        metadata_path=metadata_path,
        check_images=check_images,
        errors=errors,
        num_workers=num_workers,
    )


def _metadata_path(schema: PhenotypeSchema, data_dir, metadata_file) -> Path:
    if metadata_file is None:
        if data_dir is None:
            raise PhenodiffDataError("Pass a data folder or a metadata file; neither was given.")
        return Path(data_dir) / schema.metadata_file
    metadata_file = Path(metadata_file)
    if not metadata_file.is_absolute() and data_dir is not None and not metadata_file.exists():
        return Path(data_dir) / metadata_file
    return metadata_file
