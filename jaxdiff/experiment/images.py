"""Image files written by runs: PNG grids (training's samples/step_N.png, sample.py's
samples.png) and sample.py's samples.npz. Knows no model and no config."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

GRID_TARGET_PIXELS = 64
"""Small images are upscaled (nearest) in a grid until each is at least this many pixels."""


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_image_grid(
    images: np.ndarray, path: str, *, ncol: int | None = None, scale: int = 1
) -> None:
    """Save images [N, H, W, C] in [-1, 1] as one PNG grid (``scale``x nearest upsampling).

    Args:
      images: N images of one shape, values in [-1, 1].
      path: the PNG file to write.
      ncol: images per row (default: a square-ish grid).
      scale: integer nearest-neighbour upscaling of the whole grid.
    """
    imgs = to_uint8(images)
    n, h, w, c = imgs.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = imgs[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def save_sample_grid(images: np.ndarray, path: str, *, num_classes: int = 0) -> None:
    """The grid layout of drawn samples: one class per column when labels cycle through at
    most 16 classes, small images upscaled to about ``GRID_TARGET_PIXELS``."""
    ncol = num_classes if 0 < num_classes <= 16 else None
    scale = max(1, GRID_TARGET_PIXELS // images.shape[1])
    save_image_grid(images, path, ncol=ncol, scale=scale)


def write_samples(
    out_dir: str,
    images: np.ndarray,
    *,
    labels: Sequence[int] | None,
    seed: int,
    num_classes: int = 0,
) -> tuple[str, str]:
    """Write ``samples.png`` (a grid) and ``samples.npz`` (images in [-1, 1], labels, seed).

    Returns:
      The two paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    png, npz = os.path.join(out_dir, "samples.png"), os.path.join(out_dir, "samples.npz")
    save_sample_grid(images, png, num_classes=num_classes)
    np.savez(
        npz,
        images=images,
        labels=np.asarray(labels if labels is not None else [], np.int32),
        seed=seed,
    )
    return png, npz
