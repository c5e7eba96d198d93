"""Host-side image handling of the pipelines: input images and masks, output conversion.

Images are NHWC. An input image is a PIL image, a float array in [0, 1] or a uint8 array
([H, W, 3] or [B, H, W, 3]), or a list of those; masks likewise with one channel (or none),
1 (white) marking what to repaint. As in diffusers' image processors, images are mapped to
[-1, 1] and masks binarised at 0.5. Unlike diffusers, nothing is resized: a size that is not a
multiple of the pipeline's factor, or a mask that differs from its image in size, is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def _one(image: Any, channels: int, what: str) -> np.ndarray:
    """[B, H, W, channels] float32 in [0, 1] from one PIL image or array."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL, without importing it
        image = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: expected floats in [0, 1] or uint8, got dtype {array.dtype}.")
    if channels == 1 and array.ndim in (3, 4) and array.shape[-1] == 3:
        array = array @ np.asarray(_LUMA, np.float32)  # RGB masks: PIL's "L" conversion
    if channels == 1 and array.ndim in (2, 3) and (array.ndim == 2 or array.shape[-1] != 1):
        array = array[..., None]  # [H, W] or [B, H, W] masks
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != channels:
        raise ValueError(
            f"{what}: expected [H, W, {channels}] or [B, H, W, {channels}] (NHWC), got shape "
            f"{array.shape}."
        )
    return array.astype(np.float32)


def load_images(images: Any, channels: int = 3, what: str = "image") -> np.ndarray:
    """Stack ``images`` (see the module docstring) into float32 [B, H, W, channels] in [0, 1]."""
    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        raise ValueError(f"{what}: no images given.")
    arrays = [_one(i, channels, what) for i in items]
    shapes = {a.shape[1:3] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{what}: images of different sizes {sorted(shapes)}.")
    array = np.concatenate(arrays)
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"{what}: values must lie in [0, 1] (got [{array.min():.3g}, {array.max():.3g}])."
        )
    return array


def check_size(height: int, width: int, vae_factor: int, unet_factor: int) -> None:
    """Raise ValueError unless height and width are positive multiples of 8 (diffusers' rule)
    and of ``vae_factor * unet_factor`` (what the VAE and the U-Net's levels divide by)."""
    if height < 1 or width < 1 or height % 8 or width % 8:
        raise ValueError(
            f"height and width must be positive multiples of 8; got {height} and {width}."
        )
    factor = vae_factor * unet_factor
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of {factor} (the VAE's {vae_factor} x the "
            f"U-Net's {unet_factor}); got {height} and {width}."
        )


def per_image(array: np.ndarray, num_prompts: int, repeats: int, what: str) -> np.ndarray:
    """Rows for each generated image: one row for all, one per prompt, or one per image."""
    n = array.shape[0]
    if n == 1:
        return np.repeat(array, num_prompts * repeats, axis=0)
    if n == num_prompts:
        return np.repeat(array, repeats, axis=0)
    if n == num_prompts * repeats:
        return array
    raise ValueError(
        f"{what}: got {n} entries for {num_prompts} prompt(s) x {repeats} image(s) per prompt; "
        "give 1, one per prompt, or one per image."
    )


def to_pil(images: np.ndarray) -> list:
    """PIL images of float images [B, H, W, 3] in [0, 1] (rounded as diffusers does)."""
    from PIL import Image

    return [Image.fromarray(a) for a in (images * 255).round().astype(np.uint8)]


def as_list(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    """A prompt argument as a list of strings (None stays None)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"{what} must be a string or a list of strings; got {value!r:.200}.")
    return values
