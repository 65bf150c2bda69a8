"""Conversion of per-sample group labels (indices or names) to one array of group names."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def group_name_array(
    groups: torch.Tensor | np.ndarray | Sequence[str] | Sequence[int],
    *,
    num_samples: int,
    group_names: Sequence[str] | None = None,
    argument: str = "groups",
) -> np.ndarray:
    """Return the group of each sample as a 1-D array of names (dtype object).

    ``groups`` contains either names or integer indices. Indices are looked up in ``group_names`` when it
    is given (for example ``PhenoTorchDataset.groups``), and are otherwise written as their decimal string.
    """
    if isinstance(groups, torch.Tensor):
        values = groups.detach().cpu().numpy()
    else:
        values = np.asarray(groups, dtype=object if len(groups) and isinstance(groups[0], str) else None)
    if values.ndim != 1 or values.shape[0] != num_samples:
        raise ValueError(
            f"{argument} must be 1-D with one entry per sample ({num_samples}), got shape {tuple(values.shape)}."
        )
    if values.size and np.issubdtype(values.dtype, np.integer):
        if group_names is None:
            return np.array([str(int(v)) for v in values], dtype=object)
        names = list(group_names)
        out_of_range = [int(v) for v in values if not 0 <= int(v) < len(names)]
        if out_of_range:
            raise ValueError(
                f"{argument} contains indices {sorted(set(out_of_range))[:5]} outside group_names "
                f"(valid indices are 0..{len(names) - 1})."
            )
        return np.array([names[int(v)] for v in values], dtype=object)
    return np.array([str(v) for v in values], dtype=object)


def sorted_unique(names: np.ndarray) -> list[str]:
    """Return the distinct names, sorted, so that results list groups in the same order on every call."""
    return sorted(set(names.tolist()))
