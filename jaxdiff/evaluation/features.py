"""Jitted, data-parallel feature extraction (FID Inception pool3) and streamed FID statistics.

Images are NHWC with 3 channels (1-channel images are repeated to RGB, as pytorch-fid's
``convert('RGB')`` does), either uint8 in [0, 255] or floats in ``value_range`` (default
[0, 1], pytorch-fid's input; jaxdiff's samples are in [-1, 1]: pass ``value_range=(-1, 1)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdiff.evaluation.parallel import DataParallel
from jaxdiff.evaluation.stats import FeatureStatistics, warn_if_singular

_RANGE_SLACK = 1e-3  # float round-off at the ends of the range


def to_unit_range(
    images: Any, value_range: tuple[float, float] = (0.0, 1.0), *, rgb: bool = True
) -> np.ndarray:
    """Validated float32 NHWC images in [0, 1].

    Args:
      images: [N, H, W, 3] or [N, H, W, 1]; uint8 in [0, 255] or floats in ``value_range``.
      value_range: the (low, high) range of float images, mapped to [0, 1].
      rgb: repeat 1-channel images to 3 channels (as feature networks need).

    Raises:
      ValueError: for another rank or channel count (NCHW is named), an empty batch, values
        outside the range, or NaN.
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        nchw = x.ndim == 4 and x.shape[1] in (1, 3)
        hint = " (this looks like NCHW; jaxdiff images are NHWC)" if nchw else ""
        raise ValueError(f"images must be [N, H, W, 3] or [N, H, W, 1]; got shape {x.shape}{hint}.")
    if len(x) == 0:
        raise ValueError("images is empty.")
    if rgb and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float; got dtype {x.dtype}.")
    lo, hi = value_range
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or infinite values.")
    mn, mx = float(x.min()), float(x.max())
    slack = _RANGE_SLACK * (hi - lo)
    if mn < lo - slack or mx > hi + slack:
        hint = " (jaxdiff samples are in [-1, 1]: pass value_range=(-1, 1))" if mn < 0 else ""
        raise ValueError(
            f"float images must lie in value_range [{lo}, {hi}]; got values in [{mn:.4g}, "
            f"{mx:.4g}]{hint}. uint8 images in [0, 255] are also accepted."
        )
    return np.clip((x.astype(np.float32) - lo) / np.float32(hi - lo), 0.0, 1.0)


class FeatureExtractor:
    """A feature network jitted once and run data-parallel over the local devices.

    Calling it maps images [N, H, W, C] (see `to_unit_range`) to float64 features [N, D];
    `batches` does the same per batch of an iterable (for streaming), `statistics` accumulates
    `FeatureStatistics` without keeping the features.

    Args:
      apply_fn: ``apply_fn(params, images in [0, 1]) -> features [B, D]``.
      params: the network's parameters (replicated over the devices).
      batch_size: images per call (rounded up to a multiple of the device count).
      devices: default: ``jax.local_devices()``.
      name: for progress bars.
    """

    def __init__(
        self,
        apply_fn: Callable[[Any, jax.Array], jax.Array],
        params: Any,
        *,
        batch_size: int = 200,
        devices: Sequence[jax.Device] | None = None,
        name: str = "features",
    ):
        self._run = DataParallel(apply_fn, batch_size=batch_size, devices=devices)
        self._params = self._run.replicate(params)
        self.batch_size = self._run.batch_size
        self.name = name

    def _features(self, unit_images: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(self._params, unit_images), np.float64)

    def batches(
        self,
        images: Iterable[Any] | np.ndarray,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        progress: bool = True,
        total: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Features [b, D] per batch of ``images`` (an array, or an iterable of image batches)."""
        if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
            array = np.asarray(images)
            total, size = len(array), self.batch_size
            images = (array[i : i + size] for i in range(0, total, size))
        bar = tqdm(total=total, desc=self.name, unit="img", disable=not progress, leave=False)
        with bar:
            for batch in images:
                x = to_unit_range(batch, value_range)
                for i in range(0, len(x), self.batch_size):
                    chunk = x[i : i + self.batch_size]
                    yield self._features(chunk)
                    bar.update(len(chunk))

    def __call__(
        self,
        images: Any,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        progress: bool = False,
    ) -> np.ndarray:
        """All features [N, D] (float64) of an image array or iterable of batches."""
        return np.concatenate(
            list(self.batches(images, value_range=value_range, progress=progress))
        )

    def statistics(
        self,
        images: Iterable[Any] | np.ndarray,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        progress: bool = True,
        total: int | None = None,
    ) -> FeatureStatistics:
        """Streamed mean / covariance of the features (warns when singular)."""
        stats = FeatureStatistics()
        for feats in self.batches(images, value_range=value_range, progress=progress, total=total):
            stats.update(feats)
        warn_if_singular(stats.num_samples, stats.dim, f"{stats.num_samples} images")
        return stats


def inception_extractor(
    weights: str | os.PathLike | None = None,
    *,
    batch_size: int = 200,
    devices: Sequence[jax.Device] | None = None,
) -> FeatureExtractor:
    """`FeatureExtractor` of the FID Inception's pool3 features (2048-d, as pytorch-fid).

    Args:
      weights: ``pt_inception-2015-12-05-*.pth`` or its directory; default
        ``$JAXDIFF_INCEPTION`` (see `jaxdiff.models.load_inception`).
      batch_size: images per call.
      devices: default: the local devices.

    Raises:
      FileNotFoundError / ValueError: as `jaxdiff.models.load_inception`.
    """
    from jaxdiff.models.convert_inception import load_inception

    module, params = load_inception(weights)
    return FeatureExtractor(
        lambda p, x: module.apply({"params": p}, x), params, batch_size=batch_size,
        devices=devices, name="Inception features",
    )  # fmt: skip
