"""Validation sample grids: one row per pathology, one column per sex and age, written as PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_write_bytes


def grid_ages_of(schema) -> tuple[float, float]:
    """Return a younger and an older age for sample grids: the quarter points of the schema's age range."""
    span = schema.age.max - schema.age.min
    return schema.age.min + 0.25 * span, schema.age.min + 0.75 * span


def validation_phenotypes(vocabulary: list[str], multi_label: bool, ages: tuple[float, float]) -> tuple[list[dict], list[str], list[str]]:
    """Phenotypes of the grid in row-major order, with row and column titles.

    Rows: each label alone (and no finding for multi-label vocabularies). Columns: female and male at a
    younger and an older age.
    """
    rows = [[label] for label in vocabulary] + ([[]] if multi_label else [])
    row_titles = [label[0] if label else "no finding" for label in rows]
    columns = [(sex, age) for sex in ("female", "male") for age in ages]
    column_titles = [f"{sex[0].upper()} {age:.0f}y" for sex, age in columns]
    phenotypes = [
        {"age": age, "sex": sex, "pathology": labels if multi_label else labels[0]}
        for labels in rows
        for sex, age in columns
    ]
    return phenotypes, row_titles, column_titles


@torch.no_grad()
def sample_grid(pipeline, phenotypes: list[dict], *, num_inference_steps: int, guidance_scale: float, seed: int) -> np.ndarray:
    """Generate one image per phenotype; return (N, H, W, C) floats in [0, 1]."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    multi = pipeline.phenotype_encoder.config.multi_label
    output = pipeline(
        age=[p["age"] for p in phenotypes],
        sex=[p["sex"] for p in phenotypes],
        pathology=[p["pathology"] for p in phenotypes] if multi else [p["pathology"] for p in phenotypes],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    )
    return output.images


def save_grid_png(images: np.ndarray, row_titles: list[str], column_titles: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """Write a labelled grid of (rows * columns, H, W, C) images to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(row_titles), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 1.2, 1.3 * n_rows + 0.5), squeeze=False)
    for index, image in enumerate(images[: n_rows * n_cols]):
        ax = axes[index // n_cols][index % n_cols]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if index // n_cols == 0:
            ax.set_title(column_titles[index % n_cols], fontsize=8)
        if index % n_cols == 0:
            ax.set_ylabel(row_titles[index // n_cols], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    # Leave room at the top so the title does not cover the column titles of tall grids.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if title else None)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
