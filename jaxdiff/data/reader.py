"""Reading one batch: stream positions -> records -> a dict of numpy arrays.

The pipeline (`jaxdiff.data.pipeline`) maps batch numbers to `BatchReader`; everything here
works a whole batch at a time, so the per-record cost is the record's decoding only (and
nothing at all for a split held in memory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def resize_center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes uint8 `[h, w, C]` so it covers `size` = (H, W), then crops the centre.

    Cropping the largest centred box of the target's aspect ratio and resizing it (bicubic,
    antialiased when shrinking) is the same as resize-shorter-side-then-centre-crop.
    """
    h, w, channels = image.shape
    if (h, w) == size:
        return image
    scale = min(h / size[0], w / size[1])
    box_h, box_w = size[0] * scale, size[1] * scale
    top, left = (h - box_h) / 2, (w - box_w) / 2
    pil = Image.fromarray(image[..., 0] if channels == 1 else image, mode=_MODES[channels])
    pil = pil.resize(
        (size[1], size[0]), Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h)
    )
    return np.asarray(pil).reshape(size[0], size[1], channels)


def _stack(records: Sequence[dict[str, Any]], size: tuple[int, int] | None) -> dict:
    """Records -> {"image": uint8 [b, H, W, C], "label": int32 [b], "caption": str [b]}."""
    images = [r["image"] for r in records]
    if size is not None:
        images = [resize_center_crop(image, size) for image in images]
    out = {"image": np.stack(images)}
    if "label" in records[0]:
        out["label"] = np.array([r["label"] for r in records], np.int32)
    if "caption" in records[0]:
        captions = [r["caption"] for r in records]
        out["caption"] = np.array([c.decode() if isinstance(c, bytes) else c for c in captions])
    return out


class InMemorySource:
    """A split read once into arrays (images already at the output size)."""

    def __init__(self, source: Any, size: tuple[int, int] | None, chunk: int = 1024):
        n = len(source)
        parts = []
        with tqdm(total=n, desc="Loading split into memory", disable=n < 10_000) as bar:
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                parts.append(_stack([source[i] for i in range(start, stop)], size))
                bar.update(stop - start)
        self.arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        log.info(
            "Holding %d records (%d MB of images) in memory.", n, self.arrays["image"].nbytes >> 20
        )

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of uint64 values (Steele et al.'s SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def flip_mask(seed: int, positions: np.ndarray) -> np.ndarray:
    """Whether the record at each stream position is flipped: a fair coin per (seed, pos)."""
    keyed = _splitmix64(np.uint64(seed)) ^ positions.astype(np.uint64)
    return (_splitmix64(keyed) >> np.uint64(63)).astype(bool)


def permutation(n: int, seed: int) -> np.ndarray:
    """A seeded uniformly random permutation of [0, n): sorts n hashed keys. O(n) memory."""
    keys = _splitmix64(_splitmix64(np.uint64(seed)) ^ np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable")


def permute(indices: np.ndarray, n: int, seed: int, rounds: int = 8) -> np.ndarray:
    """Where a seeded pseudo-random permutation of [0, n) sends `indices`, in O(1) memory.

    For splits too large to hold `permutation(n)`: a balanced Feistel network on the 2k-bit
    numbers (the smallest such domain holding n, so under 4n) with SplitMix64 round
    functions, restricted to [0, n) by cycle walking (values that land outside go through
    the network again). Close to uniform for large n; for tiny n (a few bits per half) it
    reaches only some permutations, which is why small splits use `permutation`.
    """
    if n == 1:
        return np.zeros_like(indices, dtype=np.int64)
    half = np.uint64((int(n - 1).bit_length() + 1) // 2)
    mask = (np.uint64(1) << half) - np.uint64(1)
    keys = _splitmix64(_splitmix64(np.uint64(seed)) + np.arange(rounds, dtype=np.uint64))

    def network(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_splitmix64(right ^ key) & mask)
        return (left << half) | right

    x = network(np.asarray(indices, np.uint64))
    outside = x >= n
    while outside.any():
        x[outside] = network(x[outside])
        outside = x >= n
    return x.astype(np.int64)


def epoch_seed(seed: int, epoch: int | np.ndarray) -> np.ndarray:
    """The permutation seed of an epoch (uint64): every epoch is shuffled differently."""
    with np.errstate(over="ignore"):
        return _splitmix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch))


TABLE_MAX = 1 << 22
"""Up to this many records an epoch's order is `permutation` (kept per epoch), beyond it
`permute` (computed per batch)."""


class BatchReader(grain.transforms.Map):
    """Local batch number -> batch dict, by the layout in `jaxdiff.data.pipeline`."""

    def __init__(
        self,
        source: Any,
        *,
        size: tuple[int, int] | None,
        pixel_max: int,
        layout: tuple[int, int, int, int | None],
        shuffle_seed: int | None,
        flip_seed: int | None,
        with_index: bool,
    ):
        """Makes the reader.

        Args:
          source: the split (random access), or an `InMemorySource` of it.
          size: output (H, W), or None to keep the stored size.
          pixel_max: stored value that maps to 1.0.
          layout: (per-process batch size, process index, process count, stream length or
            None when endless).
          shuffle_seed: seed of the permutations (see `epoch_seed`); None: no shuffle.
          flip_seed: seed of the horizontal flips; None: no flips.
          with_index: add each record's index in the split as `index`.
        """
        self._source = source
        self._size = None if isinstance(source, InMemorySource) else size
        self._scale = np.float32(2.0 / pixel_max)
        self._b, self._p, self._count, self._total = layout
        self._shuffle_seed, self._flip_seed = shuffle_seed, flip_seed
        self._tables: dict[int, np.ndarray] = {}
        self._with_index = with_index

    def record_indices(self, positions: np.ndarray) -> np.ndarray:
        """Stream positions -> record indices (each epoch its own permutation)."""
        n = len(self._source)
        epochs, in_epoch = np.divmod(positions, n)
        if self._shuffle_seed is None:
            return in_epoch
        out = np.empty_like(in_epoch)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._epoch_permutation(int(epoch), in_epoch[here], n)
        return out

    def _epoch_permutation(self, epoch: int, indices: np.ndarray, n: int) -> np.ndarray:
        seed = epoch_seed(self._shuffle_seed, epoch)
        if n > TABLE_MAX:
            return permute(indices, n, seed)
        table = self._tables.get(epoch)
        if table is None:
            table = permutation(n, seed)
            # Keep the last two epochs: a batch (or a prefetch thread) may straddle two. The
            # dict is replaced, never changed, as reader threads may be looking at it.
            tables = {e: t for e, t in self._tables.items() if e == epoch - 1}
            tables[epoch] = table
            self._tables = tables
        return table[indices]

    def map(self, batch_number: int) -> dict[str, np.ndarray]:
        start = (batch_number * self._count + self._p) * self._b
        stop = start + self._b if self._total is None else min(start + self._b, self._total)
        positions = np.arange(start, stop, dtype=np.int64)
        records = self.record_indices(positions)
        if isinstance(self._source, InMemorySource):
            out = self._source.take(records)
        else:
            out = _stack([self._source[int(i)] for i in records], self._size)
        image = out["image"]
        if self._flip_seed is not None:
            flip = flip_mask(self._flip_seed, positions)
            image = np.where(flip[:, None, None, None], image[:, :, ::-1], image)
        out["image"] = image.astype(np.float32) * self._scale - np.float32(1.0)
        if self._with_index:
            out["index"] = records.astype(np.int32)
        return out
