import os
import stat

import pytest

from phenodiff.utils.io import atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_follows_umask(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_json_numpy_values(tmp_path):
    import numpy as np

    path = atomic_write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(2)})
    assert path.read_text().split() == ["{", '"x":', "1.5,", '"y":', "[", "0,", "1", "]", "}"]


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "folder") as staging:
            (staging / "file").write_text("partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "file").write_text("done")
    assert (tmp_path / "folder" / "file").read_text() == "done"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_directory(tmp_path / "folder"):
            pass
