"""Patient-level, stratified train/val/test splits saved as a manifest that every later step reads.

All images of one patient go to the same split. Patients are stratified by their most frequent primary
label and demographic group; see :func:`make_split` for how they are dealt.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..utils.io import atomic_write_json
from .dataset import PhenoDataset
from .errors import SplitManifestError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
MANIFEST_FORMAT = "phenodiff-split-manifest"
MANIFEST_VERSION = 1


@dataclass
class SplitManifest:
    """Assignment of every image (by ``file_name``) to ``train``, ``val`` or ``test``."""

    dataset: str
    seed: int
    fractions: Mapping[str, float]
    assignments: dict[str, str]
    stratify_by: tuple[str, ...] = ("primary_label", "group")
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def counts(self) -> dict[str, int]:
        values = pd.Series(list(self.assignments.values()), dtype=object)
        return {split: int((values == split).sum()) for split in SPLITS}

    def to_dict(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "dataset": self.dataset,
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "group_by": "patient_id",
            "stratify_by": list(self.stratify_by),
            "created": self.created,
            "counts": self.counts(),
            "assignments": self.assignments,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SplitManifest":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SplitManifestError(f"Split manifest not found: {path}. Create it with make_split() or `phenodiff summary`.") from None
        except json.JSONDecodeError as err:
            raise SplitManifestError(f"Split manifest {path} is not valid JSON ({err}); delete it to create a new split.") from None
        if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
            raise SplitManifestError(
                f"{path} is not a phenodiff split manifest of version {MANIFEST_VERSION} "
                f"(format={data.get('format')!r}, version={data.get('version')!r})."
            )
        bad = sorted({split for split in data["assignments"].values()} - set(SPLITS))
        if bad:
            raise SplitManifestError(f"{path}: unknown split name(s) {bad}; valid names are {list(SPLITS)}.")
        return cls(
            dataset=data["dataset"],
            seed=int(data["seed"]),
            fractions=data["fractions"],
            assignments=dict(data["assignments"]),
            stratify_by=tuple(data.get("stratify_by", ())),
            created=data.get("created", ""),
        )


def _validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must have exactly the keys {list(SPLITS)}, got {sorted(fractions)}.")
    if any(value < 0 for value in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {dict(fractions)}.")
    return {split: float(fractions[split]) for split in SPLITS}


def _patient_strata(dataset: PhenoDataset) -> pd.DataFrame:
    """One row per patient: image count and stratum (most frequent primary label and group)."""
    frame = pd.DataFrame(
        {
            "patient_id": dataset.records["patient_id"].astype(str).to_numpy(),
            "label": dataset.primary_labels().to_numpy(),
            "group": dataset.records["group"].to_numpy(),
        }
    )
    patients = frame.groupby("patient_id", sort=True).size().rename("images").to_frame()
    for column in ("label", "group"):
        # Most frequent value per patient; ties go to the value that sorts first.
        pairs = frame.groupby(["patient_id", column], sort=True).size().rename("n").reset_index()
        pairs = pairs.sort_values(["patient_id", "n", column], ascending=[True, False, True], kind="stable")
        patients[column] = pairs.drop_duplicates("patient_id").set_index("patient_id")[column]
    patients["stratum"] = patients["label"] + " / " + patients["group"]
    return patients


def make_split(
    dataset: PhenoDataset,
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> SplitManifest:
    """Split ``dataset`` by patient into train/val/test, stratified by primary label and demographic group.

    Args:
        dataset: Loaded dataset; its ``patient_id`` column groups images (an image without a patient id
            column in the schema is its own patient).
        fractions: Target share of images per split, keys ``train``, ``val``, ``test``.
        seed: Fixes the order among patients with the same number of images.

    Returns:
        The manifest; call :meth:`SplitManifest.save` to store it with the run.
    """
    fractions = _validate_fractions(fractions)
    rng = np.random.default_rng(seed)
    patients = _patient_strata(dataset)
    target = np.array([fractions[s] for s in SPLITS])
    usable = target > 0
    image_counts = np.zeros(len(SPLITS))
    assignment: dict[str, str] = {}

    # Patients are dealt largest first (seeded random order among equal sizes) to the split that is owed
    # the most images, counting what it is owed within the patient's stratum and overall. Dealing the
    # large patients first lets the many small ones even out the shares, and the stratum term keeps each
    # label and group spread over the splits in proportion to the targets.
    order = np.lexsort((rng.random(len(patients)), -patients["images"].to_numpy()))
    stratum_counts: dict[str, np.ndarray] = {}
    sizes = patients["images"].to_numpy()
    strata = patients["stratum"].to_numpy()
    for position in order:
        size = sizes[position]
        local = stratum_counts.setdefault(strata[position], np.zeros(len(SPLITS)))
        owed_local = target * (local.sum() + size) - local
        owed_global = target * (image_counts.sum() + size) - image_counts
        choice = int(np.argmax(np.where(usable, owed_local + owed_global, -np.inf)))
        local[choice] += size
        image_counts[choice] += size
        assignment[patients.index[position]] = SPLITS[choice]

    files = dict(zip(dataset.records["file_name"], dataset.records["patient_id"].astype(str).map(assignment)))
    return SplitManifest(dataset=dataset.name, seed=seed, fractions=fractions, assignments=files)


def apply_split(dataset: PhenoDataset, manifest: SplitManifest) -> PhenoDataset:
    """Add a ``split`` column to ``dataset.records`` from ``manifest``.

    Raises:
        SplitManifestError: an image of the dataset is not in the manifest (the data changed since the
            split was made), or one patient's images sit in two splits.
    """
    splits = dataset.records["file_name"].map(manifest.assignments)
    missing = dataset.records.loc[splits.isna(), "file_name"].tolist()
    if missing:
        raise SplitManifestError(
            f"{len(missing)} image(s) of dataset {dataset.name!r} are not in the split manifest (first: {missing[:5]}). "
            "The data changed since the split was made: create a new split in a new output folder."
        )
    dataset.records["split"] = splits.to_numpy()
    check_no_patient_leakage(dataset)
    return dataset


def check_no_patient_leakage(dataset: PhenoDataset) -> None:
    """Raise :class:`SplitManifestError` if any patient has images in more than one split."""
    per_patient = dataset.records.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1].index.tolist()
    if leaking:
        raise SplitManifestError(
            f"{len(leaking)} patient(s) have images in more than one split (first: {leaking[:5]}); "
            "the manifest was not made by patient. Create a new split with make_split()."
        )


def load_or_make_split(
    dataset: PhenoDataset,
    path: str | os.PathLike,
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> SplitManifest:
    """Read the manifest at ``path`` if it exists, else make one and save it there; then apply it."""
    path = Path(path)
    if path.exists():
        manifest = SplitManifest.load(path)
        wanted = _validate_fractions(fractions)
        if manifest.seed != seed or any(not np.isclose(manifest.fractions[s], wanted[s]) for s in SPLITS):
            raise SplitManifestError(
                f"{path} was made with seed {manifest.seed} and fractions {dict(manifest.fractions)}, but seed {seed} "
                f"and fractions {wanted} were requested. Use another output folder or delete the manifest."
            )
    else:
        manifest = make_split(dataset, fractions=fractions, seed=seed)
        manifest.save(path)
    try:
        apply_split(dataset, manifest)
    except SplitManifestError as err:
        raise SplitManifestError(f"{path}: {err} (pass another --output-dir, or delete this manifest to split again)") from None
    return manifest
