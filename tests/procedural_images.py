"""Procedural 32x32 test images for the memorisation audit: random blobs and shapes, plus light edits.

The images are diverse enough that two independent draws are far apart in pixel correlation, while a
lightly edited copy stays close to its original. Everything is seeded, so tests are deterministic.
"""

from __future__ import annotations

import numpy as np


def random_images(count: int, *, size: int = 32, seed: int = 0) -> np.ndarray:
    """Return (count, 1, size, size) float32 images in [0, 1]: 3-6 Gaussian blobs and one soft-edged rectangle or disc.

    Like downsampled radiographs, the images contain little detail finer than 2 pixels.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((count, 1, size, size), dtype=np.float32)
    for index in range(count):
        gradient = rng.normal(0, 0.3) * (x / size - 0.5) + rng.normal(0, 0.3) * (y / size - 0.5)
        image = gradient.copy()
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0, size, 2)
            sigma = rng.uniform(2.5, 6.0)
            image += rng.uniform(-1.0, 1.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        cy, cx = rng.uniform(6, size - 6, 2)
        half = rng.uniform(2, 6)
        if rng.random() < 0.5:
            distance = np.maximum(np.abs(y - cy) - half, np.abs(x - cx) - rng.uniform(2, 6))
        else:
            distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - half
        # A logistic edge 1.5 pixels wide instead of a hard mask.
        image += rng.uniform(-0.8, 0.8) / (1.0 + np.exp(distance / 0.75))
        image = (image - image.min()) / (image.max() - image.min() + 1e-9)
        images[index, 0] = image
    return images


def lightly_edited(images: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Return one light edit of each image, cycling through: a 1-pixel shift, noise (std 0.02), intensity change (x0.9 + 0.05)."""
    rng = np.random.default_rng(seed)
    edited = np.empty_like(images)
    for index, image in enumerate(images):
        kind = index % 3
        if kind == 0:
            # Shift by one pixel along one axis, repeating the border row or column (no wrap-around).
            axis = int(rng.integers(1, 3))
            size = image.shape[axis]
            source = np.clip(np.arange(size) - int(rng.choice([-1, 1])), 0, size - 1)
            edited[index] = np.take(image, source, axis=axis)
        elif kind == 1:
            edited[index] = np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)
        else:
            edited[index] = image * 0.9 + 0.05
    return edited.astype(np.float32)
