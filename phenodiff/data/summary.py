"""Dataset summary: counts per demographic group and label, split sizes, and what was dropped and why."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import atomic_write_bytes
from .dataset import PhenoDataset
from .schema import SEXES, UNKNOWN_AGE_BAND


@dataclass
class DatasetSummary:
    """Tables that describe a loaded (and optionally split) dataset.

    Attributes:
        group_label_counts: Images per demographic group (rows) and label (columns). A multi-label image
            counts once under each of its labels; images without a finding count under the no-finding name.
        group_sizes: Per group: ``images``, ``patients`` and ``status`` (``ok``, ``too small`` below the
            schema's ``min_group_size``, or ``empty``).
        split_sizes: Per split: ``images``, ``patients`` and images per label; empty when no split is applied.
        dropped: Rows dropped per reason, with the first CSV line and value as an example.
        conversions: Number of images per conversion note (for example RGBA stored grayscale made one channel).
        totals: Scalar counts (rows read, records kept, missing ages, unknown sexes, patients).
    """

    dataset: str
    group_label_counts: pd.DataFrame
    group_sizes: pd.DataFrame
    split_sizes: pd.DataFrame
    dropped: pd.DataFrame
    conversions: pd.Series
    totals: dict[str, int]
    min_group_size: int

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "totals": self.totals,
            "min_group_size": self.min_group_size,
            "group_label_counts": {g: row.to_dict() for g, row in self.group_label_counts.iterrows()},
            "group_sizes": {g: row.to_dict() for g, row in self.group_sizes.iterrows()},
            "split_sizes": {s: row.to_dict() for s, row in self.split_sizes.iterrows()},
            "dropped": self.dropped.to_dict("records"),
            "conversions": self.conversions.to_dict(),
        }

    def format(self) -> str:
        """Render the summary as plain-text tables for the terminal."""
        t = self.totals
        lines = [
            f"Dataset: {self.dataset}",
            f"Rows read: {t['rows_read']}   kept: {t['records']}   dropped: {t['dropped']}   "
            f"patients: {t['patients']}   age missing: {t['age_missing']}   sex unknown: {t['sex_unknown']}",
            "",
            "Images per demographic group and label:",
            self.group_label_counts.to_string(),
            "",
            f"Group sizes (groups below {self.min_group_size} images are too small for a reliable per-group estimate):",
            self.group_sizes.to_string(),
        ]
        if len(self.split_sizes):
            lines += ["", "Split sizes:", self.split_sizes.to_string()]
        lines += ["", "Dropped rows:"]
        lines.append(self.dropped.to_string(index=False) if len(self.dropped) else "  none")
        lines += ["", "Image conversions:"]
        lines.append(self.conversions.to_string() if len(self.conversions) else "  none")
        return "\n".join(lines)


def _ordered_groups(dataset: PhenoDataset) -> list[str]:
    declared = dataset.schema.declared_groups()
    observed = set(dataset.records["group"])
    bands = dataset.schema.age_band_labels + [UNKNOWN_AGE_BAND]
    extra = [f"{sex} {band}" for sex in SEXES for band in bands if f"{sex} {band}" in observed and f"{sex} {band}" not in declared]
    return declared + extra


def summarize(dataset: PhenoDataset, *, rows_read: int | None = None) -> DatasetSummary:
    """Count ``dataset`` by group, label and split (when a ``split`` column is present)."""
    schema = dataset.schema
    records = dataset.records
    groups = _ordered_groups(dataset)
    label_names = schema.label_names()
    none_name = label_names[-1] if schema.pathology.multi_label else None

    exploded = pd.DataFrame({"group": records["group"], "label": records["pathology"].map(lambda ls: list(ls) or [none_name])})
    exploded = exploded.explode("label")
    counts = pd.crosstab(exploded["group"], exploded["label"]).reindex(index=groups, columns=label_names, fill_value=0)
    counts.index.name = "group"

    images = records.groupby("group").size().reindex(groups, fill_value=0)
    patients = records.groupby("group")["patient_id"].nunique().reindex(groups, fill_value=0)
    status = np.where(images == 0, "empty", np.where(images < schema.groups.min_group_size, "too small", "ok"))
    group_sizes = pd.DataFrame({"images": images, "patients": patients, "status": status}, index=pd.Index(groups, name="group"))

    if "split" in records:
        split_exploded = pd.DataFrame({"split": records["split"], "label": records["pathology"].map(lambda ls: list(ls) or [none_name])})
        split_exploded = split_exploded.explode("label")
        per_label = pd.crosstab(split_exploded["split"], split_exploded["label"]).reindex(columns=label_names, fill_value=0)
        split_sizes = pd.concat(
            [records.groupby("split").size().rename("images"), records.groupby("split")["patient_id"].nunique().rename("patients"), per_label],
            axis=1,
        ).reindex(["train", "val", "test"], fill_value=0)
        split_sizes.index.name = "split"
    else:
        split_sizes = pd.DataFrame()

    dropped = dataset.dropped
    if len(dropped):
        first = dropped.groupby("reason", sort=False).first()
        dropped_table = pd.DataFrame(
            {
                "reason": first.index,
                "rows": dropped.groupby("reason", sort=False).size().to_numpy(),
                "first_line": first["source_line"].to_numpy(),
                "example": first["value"].astype(str).str.slice(0, 60).to_numpy(),
            }
        ).sort_values("rows", ascending=False, kind="stable")
    else:
        dropped_table = pd.DataFrame(columns=["reason", "rows", "first_line", "example"])

    conversions = pd.Series(list(dataset.conversions.values()), dtype=object).value_counts()
    conversions.index.name = "conversion"
    totals = {
        "rows_read": int(rows_read if rows_read is not None else len(records) + len(dropped)),
        "records": int(len(records)),
        "dropped": int(len(dropped)),
        "patients": int(records["patient_id"].nunique()),
        "age_missing": int(records["age"].isna().sum()),
        "sex_unknown": int((records["sex"] == "unknown").sum()),
    }
    return DatasetSummary(
        dataset=dataset.name,
        group_label_counts=counts,
        group_sizes=group_sizes,
        split_sizes=split_sizes,
        dropped=dropped_table,
        conversions=conversions,
        totals=totals,
        min_group_size=schema.groups.min_group_size,
    )


def plot_group_label_counts(summary: DatasetSummary, path: str | os.PathLike) -> Path:
    """Write a heatmap PNG of images per group and label; groups that are too small or empty are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = summary.group_label_counts
    status = summary.group_sizes["status"]
    height = 1.2 + 0.38 * len(counts)
    width = 2.5 + 0.75 * len(counts.columns)
    fig, ax = plt.subplots(figsize=(max(width, 6.0), max(height, 3.0)), dpi=110)
    values = counts.to_numpy(dtype=float)
    image = ax.imshow(np.log1p(values), cmap="viridis", aspect="auto")
    vmax = np.log1p(values).max() if values.size else 1.0
    for (i, j), value in np.ndenumerate(values):
        colour = "white" if np.log1p(value) < 0.6 * vmax else "black"
        ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(counts.columns)), counts.columns, rotation=45, ha="right", fontsize=8)
    labels = [f"{g}  [{status[g]}]" if status[g] != "ok" else g for g in counts.index]
    ax.set_yticks(range(len(counts.index)), labels, fontsize=8)
    for tick, group in zip(ax.get_yticklabels(), counts.index):
        if status[group] != "ok":
            tick.set_color("firebrick")
    ax.set_title(f"{summary.dataset}: images per demographic group and label\n(group names in red: fewer than {summary.min_group_size} images)", fontsize=9)
    fig.colorbar(image, ax=ax, label="log(1 + images)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
