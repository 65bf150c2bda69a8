import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("PHENODIFF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public datasets beside the repository; tests that use them skip on machines without them."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set PHENODIFF_SHARED_DATA to their folder)")
    return root


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


@pytest.fixture
def make_imagefolder(tmp_path):
    """Build an imagefolder-style dataset: images/<name>.png plus metadata.csv from a list of row dicts.

    Rows may set ``_image`` to an array to write, or ``_image=None`` to leave the file out.
    """

    def build(rows: list[dict], *, folder: str = "ds") -> Path:
        root = tmp_path / folder
        (root / "images").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        table = []
        for row in rows:
            row = dict(row)
            image = row.pop("_image", "default")
            if isinstance(image, str) and image == "default":
                image = rng.integers(0, 255, size=(8, 8), dtype=np.uint8)
            if image is not None and row.get("file_name"):
                write_png(root / row["file_name"], image)
            table.append(row)
        pd.DataFrame(table).to_csv(root / "metadata.csv", index=False)
        return root

    return build
