"""Image sets for evaluation on disk: folders of image files or .npz / .npy arrays.

- A folder: the image files directly in it (bmp, jpg, jpeg, pgm, png, ppm, tif, tiff, webp:
  pytorch-fid's list), sorted by path, read as RGB uint8 as pytorch-fid reads them, in batches.
- ``.npz``: the array ``images`` (what ``sample.py`` writes, floats in [-1, 1]) or ``arr_0``
  (uint8 reference batches as guided-diffusion / ADM distribute them); ``.npy``: one array.
  Float arrays are in [-1, 1] (jaxdiff's convention) unless a value range is given.
- A statistics ``.npz`` (``mu`` and ``sigma``, pytorch-fid's format) is not an image set; see
  `is_statistics_file`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
ARRAY_KEYS = ("images", "arr_0")


class ImageSet(NamedTuple):
    """Images on disk: ``batches(n)`` yields arrays [<= n, H, W, C]; ``value_range`` of float
    arrays; ``labels`` when the .npz holds them."""

    path: str
    num_images: int
    value_range: tuple[float, float]
    array: np.ndarray | None
    files: tuple[str, ...]
    labels: np.ndarray | None

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of at most ``batch_size`` images."""
        for i in range(0, self.num_images, batch_size):
            if self.array is not None:
                yield self.array[i : i + batch_size]
            else:
                yield np.stack([_read(f) for f in self.files[i : i + batch_size]])

    def load(self) -> np.ndarray:
        """All images in one array."""
        return self.array if self.array is not None else np.concatenate(list(self.batches(256)))


def _read(file: str) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def is_statistics_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an .npz holding ``mu`` and ``sigma`` (FID reference statistics)."""
    path = os.fspath(path)
    if not (path.endswith(".npz") and os.path.isfile(path)):
        return False
    with np.load(path) as f:
        return "mu" in f.files and "sigma" in f.files


def open_images(
    path: str | os.PathLike, value_range: tuple[float, float] = (-1.0, 1.0)
) -> ImageSet:
    """The image set at ``path`` (a folder, .npz or .npy; see module doc).

    Raises:
      FileNotFoundError: for a missing path or a folder without image files.
      ValueError: for an .npz without an image array, or an array that is not [N, H, W, C].
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, n)
            for n in os.listdir(path)
            if n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FileNotFoundError(
                f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) directly in this folder."
            )
        return ImageSet(path, len(files), (0.0, 255.0), None, tuple(files), None)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder.")
    labels = None
    if path.endswith(".npz"):
        with np.load(path) as f:
            key = next((k for k in ARRAY_KEYS if k in f.files), None)
            if key is None:
                raise ValueError(
                    f"{path}: an image .npz needs an array named one of {list(ARRAY_KEYS)}; it "
                    f"has {sorted(f.files)}."
                )
            array = f[key]
            labels = f["labels"] if "labels" in f.files else None
    elif path.endswith(".npy"):
        array = np.load(path)
    else:
        raise ValueError(f"{path}: expected a folder of images, an .npz or an .npy file.")
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: images must be [N, H, W, C] with C = 1 or 3; got {array.shape}.")
    return ImageSet(path, len(array), tuple(value_range), array, (), labels)
