"""BraTS-style NIfTI volumes sliced to 2D records.

The metadata CSV has one row per volume: the volume file (``.nii`` or ``.nii.gz``), subject id, age, sex and
either a volume-level label or a segmentation file (schema option ``segmentation_column``). Slices are
chosen by the schema option ``slice_policy``:

- ``middle``: the middle slice along ``slice_axis``;
- ``max_foreground``: the slice with the largest segmented area when a segmentation is given, otherwise
  the slice with the most foreground;
- ``all_foreground``: every slice whose foreground fraction is at least ``min_foreground_fraction``.

Foreground is the voxels above the volume's 10th percentile of non-zero values (the brain in a
skull-stripped scan), so ``all_foreground`` keeps slices with and without tumour.

With a segmentation, each slice is labelled ``tumor`` when its segmentation has a non-zero voxel and
``no_tumor`` otherwise (the schema's ``binarize.above``/``at_or_below`` are not used). Voxel values stay
float32 until :func:`phenodiff.data.images.normalize_image`. Each slice record has the file name
``<volume>#<axis>:<index>``, and the columns ``slice_axis`` and ``slice_index``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import PhenoDataset
from ..errors import EmptyDatasetError, InvalidRecordError
from ..schema import PhenotypeSchema
from .tabular import REJECTION_FIXES, ErrorPolicy, _metadata_path, build_dataset, read_metadata_csv

SLICE_POLICIES = ("middle", "max_foreground", "all_foreground")


def _foreground(volume: np.ndarray) -> np.ndarray:
    nonzero = volume[volume > 0]
    if nonzero.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    return volume > np.percentile(nonzero, 10)


def select_slices(mask: np.ndarray, *, axis: int, policy: str, min_fraction: float) -> list[int]:
    """Return slice indices along ``axis`` of a boolean 3D ``mask`` according to ``policy``."""
    if policy not in SLICE_POLICIES:
        raise ValueError(f"Unknown slice policy {policy!r}; valid policies are {list(SLICE_POLICIES)}.")
    if policy == "middle":
        return [mask.shape[axis] // 2]
    other_axes = tuple(a for a in range(3) if a != axis)
    fraction = mask.mean(axis=other_axes)
    if policy == "max_foreground":
        return [int(np.argmax(fraction))]
    return [int(i) for i in np.flatnonzero(fraction >= min_fraction)]


def load_nifti(
    schema: PhenotypeSchema,
    data_dir: str | os.PathLike | None = None,
    *,
    metadata_file: str | os.PathLike | None = None,
    check_images: bool = True,
    errors: ErrorPolicy = "drop",
    num_workers: int | None = None,
) -> PhenoDataset:
    """Load NIfTI volumes listed in a metadata CSV and slice them to 2D records (see the module docstring)."""
    import nibabel as nib

    if data_dir is None:
        raise ValueError("NIfTI datasets are sliced from the volumes, so a data folder is required.")
    options = schema.options
    policy = str(options.get("slice_policy", "middle"))
    axis = int(options.get("slice_axis", 2))
    min_fraction = float(options.get("min_foreground_fraction", 0.05))
    seg_column = options.get("segmentation_column")
    if policy not in SLICE_POLICIES:
        raise ValueError(f"Schema {schema.name!r}: unknown slice_policy {policy!r}; valid policies are {list(SLICE_POLICIES)}.")
    if axis not in (0, 1, 2):
        raise ValueError(f"Schema {schema.name!r}: slice_axis must be 0, 1 or 2, got {axis}.")

    metadata_path = _metadata_path(schema, data_dir, metadata_file)
    frame = read_metadata_csv(metadata_path)
    has_seg = seg_column is not None and seg_column in frame.columns
    label_column = schema.columns["pathology"]
    if has_seg and label_column not in frame.columns:
        # Slice labels come from the segmentation; the volume-level column is only a placeholder.
        frame[label_column] = schema.pathology.vocabulary[0]

    volumes = build_dataset(frame, schema, data_dir=data_dir, metadata_path=metadata_path, check_images=False, errors=errors)
    seg_by_line = dict(zip(np.arange(len(frame)) + 2, frame[seg_column])) if has_seg else {}
    root = volumes.root
    tumor, no_tumor = "tumor", "no_tumor"
    if has_seg and not {tumor, no_tumor} <= set(schema.pathology.vocabulary):
        raise ValueError(f"Schema {schema.name!r}: slice labels from a segmentation need 'tumor' and 'no_tumor' in the vocabulary.")

    slice_rows, dropped_rows = [], []
    for record in volumes.records.to_dict("records"):
        problem, value = None, record["image_path"]
        try:
            volume = np.asanyarray(nib.load(record["image_path"]).dataobj).astype(np.float32)
            if volume.ndim == 4:
                volume = volume[..., 0]
            if volume.ndim != 3:
                problem = "corrupt image"
            seg = None
            if problem is None and has_seg:
                seg_path = root / str(seg_by_line[record["source_line"]]).strip()
                value = str(seg_path)
                seg = np.asanyarray(nib.load(str(seg_path)).dataobj)
                if seg.shape[:3] != volume.shape:
                    problem, value = "corrupt image", f"{seg_path} shape {seg.shape} != volume shape {volume.shape}"
        except FileNotFoundError:
            problem = "image file not found"
        except Exception:  # nibabel raises several unrelated types for damaged headers and data
            problem = "corrupt image"
        if problem is not None:
            if errors == "raise":
                raise InvalidRecordError(str(metadata_path), record["source_line"], problem, value, REJECTION_FIXES[problem])
            dropped_rows.append({"source_line": record["source_line"], "file_name": record["file_name"], "reason": problem, "value": value})
            continue

        mask = (seg > 0) if seg is not None and policy == "max_foreground" else _foreground(volume)
        for index in select_slices(mask, axis=axis, policy=policy, min_fraction=min_fraction):
            row = dict(record)
            row["file_name"] = f"{record['file_name']}#{axis}:{index}"
            row["slice_axis"] = axis
            row["slice_index"] = index
            if seg is not None:
                row["pathology"] = (tumor,) if np.take(seg, index, axis=axis).any() else (no_tumor,)
            slice_rows.append(row)

    records = pd.DataFrame(slice_rows, columns=list(volumes.records.columns) + ["slice_axis", "slice_index"])
    dropped = pd.concat([volumes.dropped, pd.DataFrame(dropped_rows, columns=volumes.dropped.columns)], ignore_index=True)
    if records.empty:
        raise EmptyDatasetError(
            f"{metadata_path}: no slice selected from {len(frame)} volume(s) with policy {policy!r}; "
            f"dropped: {dropped['reason'].value_counts().to_dict()}. Lower min_foreground_fraction or use policy 'middle'."
        )
    return PhenoDataset(schema=schema, records=records, dropped=dropped, root=root, metadata_path=Path(metadata_path))
