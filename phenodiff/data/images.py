"""Image reading that keeps the stored bit depth until normalisation.

``read_image`` returns the stored pixel values (uint8, uint16, int32 or float32) with one or three channels
as the schema asks, together with a note of any conversion it made: an RGB or RGBA file whose channels are
identical becomes one channel without loss, a colour file read as grayscale is converted with ITU-R BT.601
luminance weights, and a transparent alpha channel is composited on black. ``normalize_image`` maps the
values to float32 in [0, 1] by the range of their dtype, or by robust percentiles for float data such as NIfTI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ImageInfo:
    """What the file stores and what was done to it on reading."""

    mode: str
    dtype: str
    height: int
    width: int
    conversion: str  # empty when the stored pixels were used unchanged


class CorruptImageError(ValueError):
    """An image file cannot be decoded (corrupt, truncated or not an image)."""


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _pil_to_array(image: Image.Image) -> tuple[np.ndarray, str]:
    """Return the stored values of a PIL image and the mode they came from, without narrowing the bit depth."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16), mode
    if mode == "I":
        array = np.asarray(image, dtype=np.int32)
        # 16-bit PNGs are sometimes opened as mode 'I'; keep them unsigned 16-bit when the values fit.
        if array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            return array.astype(np.uint16), mode
        return array, mode
    if mode == "F":
        return np.asarray(image, dtype=np.float32), mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        converted = "RGBA" if ("A" in mode or "transparency" in image.info) else "RGB"
        return np.asarray(image.convert(converted)), mode
    return np.asarray(image), mode


def _to_channels(array: np.ndarray, mode: str, channels: int) -> tuple[np.ndarray, str]:
    """Convert ``array`` (H, W) or (H, W, C) to ``channels`` channels and describe the conversion."""
    notes = []
    if mode not in ("L", "RGB", "RGBA", "LA") and not mode.startswith("I") and mode != "F":
        notes.append(f"{mode}->{'RGBA' if array.ndim == 3 and array.shape[2] == 4 else 'RGB'} (palette or colour space)")

    if array.ndim == 3 and array.shape[2] in (2, 4):
        alpha = array[..., -1]
        colour = array[..., :-1]
        full = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
        if np.all(alpha == full):
            notes.append("alpha dropped (fully opaque)")
            array = colour
        else:
            weight = alpha.astype(np.float32)[..., None] / float(full)
            array = (colour.astype(np.float32) * weight).round().astype(array.dtype)
            notes.append("alpha composited on black")

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]

    if channels == 1 and array.ndim == 3:
        if np.all(array[..., 0] == array[..., 1]) and np.all(array[..., 0] == array[..., 2]):
            array = array[..., 0]
            notes.append("RGB->L (identical channels, lossless)")
        else:
            lum = array.astype(np.float64) @ LUMINANCE_WEIGHTS
            array = np.clip(lum.round(), 0, np.iinfo(array.dtype).max).astype(array.dtype) if np.issubdtype(
                array.dtype, np.integer
            ) else lum.astype(np.float32)
            notes.append("RGB->L (BT.601 luminance)")
    elif channels == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
        notes.append("L->RGB (channel replicated)")
    return array, "; ".join(notes)


def read_image(path: str | os.PathLike, *, channels: int = 1) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file with its stored bit depth.

    Args:
        path: PNG, JPEG, TIFF or any format PIL reads. NIfTI volumes are read with :func:`read_nifti_slice`.
        channels: 1 for an (H, W) array, 3 for an (H, W, 3) array.

    Returns:
        The pixel array (uint8, uint16, int32 or float32) and an :class:`ImageInfo`.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptImageError: the file cannot be decoded completely.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            array, mode = _pil_to_array(image)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"Cannot decode image {path}: {err}. Replace the file or remove its row from the metadata.") from None
    array, conversion = _to_channels(array, mode, channels)
    info = ImageInfo(mode=mode, dtype=str(array.dtype), height=array.shape[0], width=array.shape[1], conversion=conversion)
    return array, info


def read_nifti_slice(path: str | os.PathLike, *, axis: int, index: int) -> np.ndarray:
    """Return one 2D float32 slice of a NIfTI volume (for 4D volumes, of the first volume)."""
    import nibabel as nib

    try:
        volume = nib.load(str(path))
        data = np.asanyarray(volume.dataobj)
    except FileNotFoundError:
        raise
    except Exception as err:  # nibabel raises several unrelated types for damaged headers and data
        raise CorruptImageError(f"Cannot read NIfTI volume {path}: {err}. Replace the file or remove its row.") from None
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3:
        raise CorruptImageError(f"NIfTI volume {path} has {data.ndim} dimensions; expected a 3D (or 4D) volume.")
    return np.take(data, index, axis=axis).astype(np.float32)


def normalize_image(array: np.ndarray, *, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map stored values to float32 in [0, 1].

    Unsigned integers are divided by their dtype's maximum (255 for 8-bit, 65535 for 16-bit), so the
    relative intensities a scanner wrote are kept. Float and signed data have no fixed range and are
    scaled between the given percentiles of the image, then clipped.
    """
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    values = array.astype(np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
