"""The input pipeline: `tfds.data_source` + grain, deterministic, sharded and resumable.

One record stream is defined for all processes: stream position i (counting on over epochs)
holds record `perm_e(i mod n)` of the split's n records, where e = i // n and perm_e is a
seeded pseudo-random permutation, a new one each epoch (`reader.permutation`, or
`reader.permute` for splits over `reader.TABLE_MAX` records); the random flip
of position i depends only on the seed and i. The stream is cut into blocks of the
per-process batch size b and process p reads blocks p, p + P, p + 2P, ... So global step s
is stream positions [s * B, (s + 1) * B) for the global batch size B = P * b, whatever the
number of processes, and the processes' batches concatenated in process order are the
one-process batch.

grain iterates over batch numbers and maps each to a whole batch (`reader.BatchReader`),
decoding in threads and, optionally, worker processes. The returned iterator is a grain
`DatasetIterator`: `get_state()` gives a JSON-serialisable dict and `set_state(state)` on a
new pipeline built with the same arguments continues with exactly the next batch.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import numpy as np

from jaxdiff.data.reader import BatchReader, InMemorySource
from jaxdiff.data.sources import dataset_metadata, get_builder

AUTO_CACHE_BYTES = 64 << 20
"""`cache=None` holds a split in memory when its images at output size take at most this."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _image_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Validates `image_size` (int or (height, width), positive) and returns (H, W)."""
    if image_size is None:
        return None
    hw = (image_size, image_size) if _is_int(image_size) else image_size
    if (
        not isinstance(hw, tuple | list)
        or len(hw) != 2
        or not all(_is_int(s) and s > 0 for s in hw)
    ):
        raise ValueError(
            f"image_size must be a positive int or a pair of positive ints, got {image_size!r}."
        )
    return int(hw[0]), int(hw[1])


def _resolve_source(source: Any, split: str, builder_kwargs: Mapping[str, Any]):
    """Returns (random-access data source, pixel_max, stored image shape or None)."""
    if isinstance(source, str):
        source = get_builder(source, **builder_kwargs)
    elif builder_kwargs:
        raise ValueError("data_dir/download/builder_kwargs only apply when source is a name.")
    if hasattr(source, "as_data_source"):
        meta = dataset_metadata(source)
        if split not in meta.split_sizes:
            raise ValueError(
                f"Dataset {meta.name} has no split '{split}'; it has {sorted(meta.split_sizes)}."
            )
        return source.as_data_source(split=split), meta.pixel_max, meta.image_shape
    if hasattr(source, "dataset_info"):
        meta = dataset_metadata(source)
        return source, meta.pixel_max, meta.image_shape
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        return source, 255, None
    raise TypeError(
        f"source must be a dataset name, a TFDS builder or a random-access data source, "
        f"got {type(source).__name__}."
    )


def _use_default_flags_if_unparsed() -> None:
    """grain's worker processes read absl flags, which fails outside `absl.app.run`."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_ints(**values: tuple[int | None, int, bool]) -> None:
    """Checks each value: (value, minimum, None allowed)."""
    for name, (value, low, optional) in values.items():
        if value is None and optional:
            continue
        if not _is_int(value) or value < low:
            allowed = f"an int >= {low}" + (" or None" if optional else "")
            raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def _check_sharding(global_batch_size: int, index: int, count: int, seed: int) -> None:
    if index >= count or global_batch_size % count:
        raise ValueError(
            "Need 0 <= process_index < process_count and global_batch_size divisible by "
            f"process_count; got process_index={index}, process_count={count}, "
            f"global_batch_size={global_batch_size}."
        )
    if seed >= 2**32:
        raise ValueError(f"seed must be below 2**32, got {seed}.")


def _num_local_batches(
    n: int, num_epochs: int | None, b: int, p: int, count: int, drop_remainder: bool
) -> tuple[int, int | None]:
    """(batches process p reads, stream length or None when endless)."""
    if num_epochs is None:
        return sys.maxsize // (b * count), None
    total = num_epochs * n
    if drop_remainder:
        return total // (b * count), total
    blocks = math.ceil(total / b)
    return max(0, math.ceil((blocks - p) / count)), total


def _should_cache(cache: bool | None, n: int, shape: tuple | None, size: tuple | None) -> bool:
    if cache is not None:
        return cache
    h, w, c = shape if shape is not None else (None, None, None)
    if size is not None:
        h, w = size
    return None not in (h, w, c) and n * h * w * c <= AUTO_CACHE_BYTES


def make_pipeline(
    source: Any,
    *,
    split: str = "train",
    global_batch_size: int,
    image_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    random_flip: bool = False,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch_batches: int = 4,
    cache: bool | None = None,
    with_index: bool = False,
    transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    builder_kwargs: Mapping[str, Any] | None = None,
) -> grain.DatasetIterator:
    """Builds this process's iterator over batches of a dataset.

    Args:
      source: a dataset name for `get_builder` ("digits", "image_folder", "cifar10", ...),
        a TFDS builder, or a random-access data source of records with an uint8 `image`.
      split: the split to read.
      global_batch_size: batch size summed over processes; each process yields
        `global_batch_size // process_count` examples per batch.
      image_size: output (H, W) or one int for square; images are resized to cover it and
        centre-cropped. None keeps the stored size (which must then be fixed).
      seed: seeds the shuffle (a new permutation every epoch) and the flips; 0 <= seed < 2**32.
      shuffle: shuffle the records; otherwise read them in stored order.
      random_flip: flip each image horizontally with probability 1/2.
      num_epochs: passes over the split; None repeats forever.
      drop_remainder: drop a final partial global batch, so all processes take the same
        number of full steps. Keep True for multi-process training.
      process_index: this process's index; default `jax.process_index()`.
      process_count: number of processes; default `jax.process_count()`.
      worker_count: worker processes that read batches (0: read in this process).
      read_threads: threads that read batches in each worker (or here).
      prefetch_batches: batches read ahead in each worker (or here).
      cache: read the split once into memory (at output size) and serve batches from there.
        None: when its images take at most `AUTO_CACHE_BYTES`.
      with_index: add `index` (int32 [b]), each record's position in its split.
      transform: a function of each batch dict, run where batches are read (reader threads or
        worker processes, so it must be picklable with `worker_count` > 0), e.g. tokenizing
        captions (`jaxdiff.training.text_conditioning.TokenizeCaptions`). It must be
        deterministic: resuming reads batches again by their number.
      data_dir, download, builder_kwargs: passed to `get_builder` when `source` is a name.

    Returns:
      An iterator of dicts of numpy arrays: `image` float32 [b, H, W, C] in [-1, 1],
      `label` int32 [b] and `caption` str [b] when the dataset has them. It has
      `get_state()` (a JSON-serialisable dict) and `set_state(state)`.
    """
    size = _image_hw(image_size)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    _check_ints(
        global_batch_size=(global_batch_size, 1, False),
        process_count=(process_count, 1, False),
        process_index=(process_index, 0, False),
        seed=(seed, 0, False),
        num_epochs=(num_epochs, 1, True),
        worker_count=(worker_count, 0, False),
        read_threads=(read_threads, 1, False),
        prefetch_batches=(prefetch_batches, 0, False),
    )
    _check_sharding(global_batch_size, process_index, process_count, seed)
    kwargs = dict(builder_kwargs or {})
    if data_dir is not None or download:
        kwargs.update(data_dir=data_dir, download=download)
    data, pixel_max, stored_shape = _resolve_source(source, split, kwargs)
    if size is None and stored_shape is not None and None in stored_shape[:2]:
        raise ValueError("The images of this dataset differ in size: pass image_size.")
    n = len(data)
    if n == 0:
        raise ValueError(f"The split '{split}' is empty.")
    if _should_cache(cache, n, stored_shape, size):
        data = InMemorySource(data, size)

    local_batch = global_batch_size // process_count
    count, total = _num_local_batches(
        n, num_epochs, local_batch, process_index, process_count, drop_remainder
    )
    if count == 0 and drop_remainder:
        raise ValueError(
            f"{num_epochs} epoch(s) of the {n} records of split '{split}' do not fill one "
            f"global batch of {global_batch_size}: use drop_remainder=False or a smaller batch."
        )
    shuffle_seed, flip_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    reader = BatchReader(
        data,
        size=size,
        pixel_max=pixel_max,
        layout=(local_batch, process_index, process_count, total),
        shuffle_seed=shuffle_seed if shuffle else None,
        flip_seed=flip_seed if random_flip else None,
        with_index=with_index,
    )
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    ds = grain.MapDataset.range(count).map(reader)
    if transform is not None:
        ds = ds.map(transform)
    ds = ds.to_iter_dataset(read)
    if worker_count > 0:
        _use_default_flags_if_unparsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)


def global_batch(
    batch: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    data_axis: str | tuple[str, ...] = "data",
) -> dict[str, Any]:
    """Assembles the processes' local batches into global arrays sharded over `data_axis`.

    This is :func:`jaxdiff.training.global_batch` (one implementation, one set of rules) with
    the pipeline's defaults: the batch is split over the mesh axis "data" only, and string
    arrays (captions) are returned unchanged: they stay on the host.

    Args:
      batch: dict of numpy arrays with the local batch on axis 0 (from `make_pipeline`).
      mesh: the device mesh.
      data_axis: the mesh axis name(s) that split the batch.

    Returns:
      A dict of `jax.Array` (string arrays left as numpy).
    """
    # Imported here: building a data pipeline does not need the training engine.
    from jaxdiff.training.sharding import global_batch as place_batch

    return dict(place_batch(dict(batch), mesh, data_axis=data_axis, keep_strings=True))
