"""Synthetic sampling plan: how many images to generate for each (demographic group, label) cell.

Given the real count n_c of every cell c and a budget of B synthetic images, the plan hands out the B
images one at a time. Each goes to the cell that is furthest behind its target, so under-represented
cells are filled first:

- ``equal_cells``: the cell with the smallest total (real + planned) gets the next image. With enough
  budget every cell ends with the same total.
- ``equal_groups_within_label``: within each label l the target is T_l = max_g n_(g,l), the largest real
  group. The cell with the smallest fill ratio (real + planned) / T_l gets the next image. Groups are
  balanced within each label while the real label proportions are kept; labels that no group has
  (T_l = 0) get nothing.

Ties go to the cell with fewer real images, then to the cell listed first in the counts, so the same counts
always give the same plan. The greedy loop costs O(B log C) for C cells.
"""

from __future__ import annotations

import heapq
import io
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Mapping

import pandas as pd

from ..data.dataset import PhenoDataset
from ..data.schema import PhenotypeSchema
from ..utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

PLAN_TARGETS = ("equal_cells", "equal_groups_within_label")
PLAN_FORMAT = "phenodiff-synthesis-plan"
PLAN_VERSION = 1


def real_cell_counts(
    dataset: PhenoDataset,
    *,
    split: str | None = "train",
    groups: list[str] | None = None,
) -> pd.DataFrame:
    """Count real images per (group, label) cell.

    A multi-label image counts once in the cell of each label it has, and an image with no finding counts
    in the no-finding cell (``schema.label_names()``), so a cell is "images of this group that show this
    label". Every declared cell is listed, with 0 where no image falls.

    Args:
        dataset: Loaded dataset; with ``split`` given, it needs a ``split`` column.
        split: The split to count (``train`` by default), or None for all records.
        groups: The groups to plan for; defaults to ``schema.declared_groups()`` (female and male in every
            age band). Records of other groups (unknown sex or age) are left out, because no phenotype can
            be generated for them, and their number is logged.

    Returns:
        A DataFrame with columns ``group``, ``label`` and ``real``.
    """
    records = dataset.records
    if split is not None:
        if "split" not in records:
            raise ValueError("The dataset has no 'split' column; apply a split first (phenodiff.data.load_or_make_split).")
        records = records[records["split"] == split]
    schema = dataset.schema
    groups = list(groups) if groups is not None else schema.declared_groups()
    labels = schema.label_names()
    none_name = labels[-1] if schema.pathology.multi_label else None

    counts = {(group, label): 0 for group in groups for label in labels}
    outside = 0
    for group, pathology in zip(records["group"], records["pathology"]):
        if group not in groups:
            outside += 1
            continue
        for label in pathology or ((none_name,) if none_name else ()):
            counts[(group, label)] += 1
    if outside:
        logger.info("Left %d record(s) out of the cell counts: their groups are not among %s.", outside, groups)
    return pd.DataFrame([(g, l, n) for (g, l), n in counts.items()], columns=["group", "label", "real"])


def _counts_frame(counts: pd.DataFrame | Mapping[tuple[str, str], int]) -> pd.DataFrame:
    if isinstance(counts, pd.DataFrame):
        missing = sorted({"group", "label", "real"} - set(counts.columns))
        if missing:
            raise ValueError(f"counts is missing the column(s) {missing}; it needs 'group', 'label' and 'real'.")
        frame = counts[["group", "label", "real"]].copy()
    else:
        frame = pd.DataFrame([(g, l, n) for (g, l), n in counts.items()], columns=["group", "label", "real"])
    if frame.empty:
        raise ValueError("counts has no cells; pass at least one (group, label) count.")
    if frame.duplicated(["group", "label"]).any():
        duplicates = frame.loc[frame.duplicated(["group", "label"]), ["group", "label"]].values.tolist()
        raise ValueError(f"counts lists some cells twice: {duplicates[:5]}.")
    if (frame["real"] < 0).any() or not all(float(n).is_integer() for n in frame["real"]):
        raise ValueError(f"counts must be non-negative integers, got {frame['real'].tolist()[:10]}.")
    frame["real"] = frame["real"].astype(int)
    return frame.reset_index(drop=True)


def _label_targets(frame: pd.DataFrame) -> dict[str, int]:
    return frame.groupby("label")["real"].max().to_dict()


def _allocate(frame: pd.DataFrame, budget: int, target: str) -> list[int]:
    """Hand out ``budget`` images one at a time to the cell with the lowest priority key."""
    real = frame["real"].tolist()
    if target == "equal_cells":
        scale = [1] * len(real)
    else:
        label_targets = _label_targets(frame)
        scale = [label_targets[label] for label in frame["label"]]

    planned = [0] * len(real)
    heap = [(Fraction(n, s), n, i) for i, (n, s) in enumerate(zip(real, scale)) if s > 0]
    if not heap and budget > 0:
        raise ValueError("No cell can receive images: every label has zero real images in every group.")
    heapq.heapify(heap)
    for _ in range(budget):
        _, n, i = heapq.heappop(heap)
        planned[i] += 1
        heapq.heappush(heap, (Fraction(real[i] + planned[i], scale[i]), n, i))
    return planned


def _phenotype_columns(frame: pd.DataFrame, schema: PhenotypeSchema) -> pd.DataFrame:
    """Add the phenotype that generates each cell: sex, age band edges and the pathology tuple."""
    none_names = set(schema.label_names()) - set(schema.pathology.vocabulary)
    sexes, lows, highs, pathologies = [], [], [], []
    for group, label in zip(frame["group"], frame["label"]):
        sex, low, high = schema.group_bounds(group)
        sexes.append(sex)
        lows.append(low)
        highs.append(high)
        pathologies.append(() if label in none_names else (label,))
    return frame.assign(sex=sexes, age_min=lows, age_max=highs, pathology=pathologies)


@dataclass
class SynthesisPlan:
    """A planned number of synthetic images per cell.

    Attributes:
        target: ``equal_cells`` or ``equal_groups_within_label``.
        budget: Total number of synthetic images planned.
        table: One row per cell with ``group``, ``label``, ``real``, ``synthetic`` (planned) and ``total``.
            With a schema, it also has ``sex``, ``age_min`` and ``age_max`` (the band's edges in years) and
            ``pathology`` (the label set to generate, empty for no finding).
    """

    target: str
    budget: int
    table: pd.DataFrame

    def synthetic_counts(self) -> dict[tuple[str, str], int]:
        """Planned images per (group, label)."""
        return {(g, l): int(n) for g, l, n in zip(self.table["group"], self.table["label"], self.table["synthetic"])}

    def with_realised(self, realised: Mapping[tuple[str, str], int]) -> pd.DataFrame:
        """Return the table with ``realised`` (images actually kept, for example after copy rejection) and
        ``shortfall`` (planned minus realised) columns. Cells missing from ``realised`` count as 0."""
        unknown = sorted(set(realised) - set(self.synthetic_counts()))
        if unknown:
            raise ValueError(f"realised counts name cells that the plan does not have: {unknown[:5]}.")
        table = self.table.copy()
        table["realised"] = [int(realised.get((g, l), 0)) for g, l in zip(table["group"], table["label"])]
        table["shortfall"] = table["synthetic"] - table["realised"]
        return table

    def to_dict(self, realised: Mapping[tuple[str, str], int] | None = None) -> dict:
        table = self.table if realised is None else self.with_realised(realised)
        rows = table.assign(**({"pathology": table["pathology"].map(list)} if "pathology" in table else {}))
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "target": self.target,
            "budget": self.budget,
            "cells": rows.to_dict(orient="records"),
        }

    def save(
        self, directory: str | os.PathLike, *, realised: Mapping[tuple[str, str], int] | None = None, name: str = "synthesis_plan"
    ) -> tuple[Path, Path]:
        """Write ``<name>.json`` and ``<name>.csv`` into ``directory`` atomically, with realised counts when given."""
        directory = Path(directory)
        table = self.table if realised is None else self.with_realised(realised)
        buffer = io.StringIO()
        table.assign(**({"pathology": table["pathology"].map("|".join)} if "pathology" in table else {})).to_csv(
            buffer, index=False
        )
        json_path = atomic_write_json(directory / f"{name}.json", self.to_dict(realised))
        csv_path = atomic_write_text(directory / f"{name}.csv", buffer.getvalue())
        return json_path, csv_path


def plan_synthesis(
    counts: pd.DataFrame | Mapping[tuple[str, str], int],
    *,
    budget: int,
    target: Literal["equal_cells", "equal_groups_within_label"] = "equal_cells",
    schema: PhenotypeSchema | None = None,
) -> SynthesisPlan:
    """Plan how many synthetic images each (group, label) cell gets, filling under-represented cells first.

    Args:
        counts: Real counts, a DataFrame with ``group``, ``label`` and ``real`` columns (see
            :func:`real_cell_counts`) or a mapping from (group, label) to a count.
        budget: Total synthetic images, >= 0.
        target: ``equal_cells`` or ``equal_groups_within_label`` (see the module docstring).
        schema: When given, the table gets the phenotype columns a generator needs for each cell.
    """
    if target not in PLAN_TARGETS:
        raise ValueError(f"Invalid target {target!r}; valid options are {list(PLAN_TARGETS)}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"Invalid budget {budget!r}: it must be an integer >= 0.")
    frame = _counts_frame(counts)
    frame["synthetic"] = _allocate(frame, budget, target)
    frame["total"] = frame["real"] + frame["synthetic"]
    if schema is not None:
        frame = _phenotype_columns(frame, schema)
    return SynthesisPlan(target=target, budget=budget, table=frame)
