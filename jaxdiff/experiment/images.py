"""Image files written by runs: PNG grids (training's samples/step_N.png, sample.py's
samples.png) and sample.py's samples.npz. Knows no model and no config."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

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


def save_sample_grid(
    images: np.ndarray,
    path: str,
    *,
    num_classes: int = 0,
    prompts: Sequence[str] | None = None,
) -> None:
    """The grid layout of drawn samples: one class per column when labels cycle through at
    most 16 classes, small images upscaled to about ``GRID_TARGET_PIXELS``; with ``prompts``
    (one per image) a :func:`save_prompt_grid`."""
    scale = max(1, GRID_TARGET_PIXELS // images.shape[1])
    if prompts is not None:
        save_prompt_grid(images, prompts, path, scale=scale)
        return
    ncol = num_classes if 0 < num_classes <= 16 else None
    save_image_grid(images, path, ncol=ncol, scale=scale)


def save_prompt_grid(
    images: np.ndarray, prompts: Sequence[str], path: str, *, scale: int = 1, max_columns: int = 16
) -> None:
    """One row per distinct prompt (in order of appearance), its text on the left, then up to
    ``max_columns`` of its images.

    Args:
      images: N images [N, H, W, C] in [-1, 1].
      prompts: the prompt of each image.
      path: the PNG file to write.
      scale: integer nearest-neighbour upscaling of the images.
      max_columns: images shown per prompt.
    """
    imgs = to_uint8(images).repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = imgs.shape
    prompts = [str(p) for p in prompts]
    if len(prompts) != n:
        raise ValueError(f"Need one prompt per image; got {len(prompts)} for {n} images.")
    rows = list(dict.fromkeys(prompts))
    members = [[i for i in range(n) if prompts[i] == p][:max_columns] for p in rows]
    ncol = max(len(m) for m in members)
    labels = [p or '"" (unconditional)' for p in rows]
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_w = int(max(measure.textlength(t) for t in labels)) + 12
    mode = "L" if c == 1 else "RGB"
    grid = Image.new(mode, (text_w + ncol * (w + 1) + 1, len(rows) * (h + 1) + 1))
    draw = ImageDraw.Draw(grid)
    white = 255 if c == 1 else (255, 255, 255)
    for r, (label, idx) in enumerate(zip(labels, members, strict=True)):
        y = 1 + r * (h + 1)
        draw.text((6, y + h // 2 - 5), label, fill=white)
        for j, i in enumerate(idx):
            tile = imgs[i][..., 0] if c == 1 else imgs[i]
            grid.paste(Image.fromarray(tile), (text_w + 1 + j * (w + 1), y))
    grid.save(path)


def write_samples(
    out_dir: str,
    images: np.ndarray,
    *,
    labels: Sequence[int] | None,
    seed: int,
    num_classes: int = 0,
) -> tuple[str, str]:
    """Write ``samples.png`` (a grid) and ``samples.npz`` (images in [-1, 1], labels, seed).

    ``labels`` may be the prompts of a text-conditioned model (strings, one per image): the
    grid then shows them (:func:`save_prompt_grid`) and the .npz holds ``prompts``.

    Returns:
      The two paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    png, npz = os.path.join(out_dir, "samples.png"), os.path.join(out_dir, "samples.npz")
    if labels is not None and np.asarray(labels).dtype.kind in "OUS":
        prompts = np.asarray(labels).astype(str)
        save_sample_grid(images, png, prompts=prompts)
        np.savez(npz, images=images, prompts=prompts, seed=seed)
        return png, npz
    save_sample_grid(images, png, num_classes=num_classes)
    np.savez(
        npz,
        images=images,
        labels=np.asarray(labels if labels is not None else [], np.int32),
        seed=seed,
    )
    return png, npz
