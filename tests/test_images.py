import numpy as np
import pytest
from PIL import Image

from phenodiff.data import CorruptImageError, normalize_image, read_image


def test_16bit_png_keeps_depth(tmp_path):
    array = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    loaded, info = read_image(path, channels=1)
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, array)
    assert info.conversion == ""
    assert normalize_image(loaded).max() == pytest.approx(63000 / 65535)


def test_rgb_stored_grayscale_is_lossless(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([gray] * 3, axis=2)).save(path)
    loaded, info = read_image(path, channels=1)
    assert loaded.shape == (8, 8)
    np.testing.assert_array_equal(loaded, gray)
    assert "identical channels" in info.conversion


def test_rgba_opaque_grayscale(tmp_path):
    gray = np.full((4, 4), 120, dtype=np.uint8)
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=2)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    loaded, info = read_image(path, channels=1)
    np.testing.assert_array_equal(loaded, gray)
    assert "alpha dropped" in info.conversion
    assert "identical channels" in info.conversion


def test_rgba_transparent_is_composited(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    loaded, info = read_image(path, channels=1)
    assert loaded.max() == 0
    assert "composited" in info.conversion


def test_colour_to_gray_uses_luminance(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    path = tmp_path / "green.png"
    Image.fromarray(rgb).save(path)
    loaded, info = read_image(path, channels=1)
    assert loaded[0, 0] == round(0.587 * 255)
    assert "luminance" in info.conversion


def test_gray_to_rgb_replicates(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    loaded, info = read_image(path, channels=3)
    assert loaded.shape == (4, 4, 3)
    np.testing.assert_array_equal(loaded[..., 2], gray)
    assert "replicated" in info.conversion


def test_corrupt_file_raises(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match="bad.png"):
        read_image(path)


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError):
        read_image(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "absent.png")


def test_normalize_float_uses_percentiles():
    values = np.linspace(-1000.0, 3000.0, 1001, dtype=np.float32)
    out = normalize_image(values, percentiles=(0.0, 100.0))
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.0
    assert normalize_image(np.zeros(5, dtype=np.float32)).max() == 0.0
