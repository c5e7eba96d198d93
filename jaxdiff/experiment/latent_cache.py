"""Encoding a split once with a frozen VAE: posterior moments by record index, kept on disk.

``config.latent.cache=True`` trains on the moments (mean and log-variance, concatenated on
the channel axis) of every training image, computed once, instead of running the encoder in
every step. The file ``latent_cache/moments.npy`` in the run's workdir is reused while its
``latent_cache/moments.json`` matches the VAE (source, step and a hash of its parameters) and
the data (dataset, split, image size, record count); anything else re-encodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff.models import AutoencoderKL

CACHE_DIR = "latent_cache"
MOMENTS_KEY = "moments"
"""The batch entry of cached moments (what `jaxdiff.training.latent` reads)."""


def params_digest(params: Any) -> str:
    """sha256 of every parameter's bytes, in tree order (identifies a VAE's weights)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


def encode_split(
    vae: AutoencoderKL,
    params: Any,
    builder: Any,
    *,
    split: str,
    image_size: int | None,
    batch_size: int = 64,
    limit: int | None = None,
) -> np.ndarray:
    """Posterior moments [N, h, w, 2C] of a split's first ``limit`` (default: all) images, in
    stored order (record i at row i). Every call of the encoder has ``batch_size`` rows."""
    pipeline = data_lib.make_pipeline(
        builder,
        split=split,
        global_batch_size=batch_size,
        image_size=image_size,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        process_index=0,
        process_count=1,
    )

    @jax.jit
    def moments(p, x):
        posterior = vae.apply({"params": p}, x, method="encode")
        return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

    out, seen = [], 0
    for batch in pipeline:
        x = batch["image"]
        n = len(x)
        if n < batch_size:  # pad: one compiled shape
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(moments(params, x))[:n])
        seen += n
        if limit is not None and seen >= limit:
            break
    result = np.concatenate(out)
    return result if limit is None else result[:limit]


def load_or_encode(workdir: str, fingerprint: Mapping[str, Any], encode: Any) -> np.ndarray:
    """The cached moments of ``workdir`` if their fingerprint matches, else ``encode()``'s,
    written there (process 0; the file is renamed into place once complete)."""
    folder = os.path.join(workdir, CACHE_DIR)
    array_path = os.path.join(folder, "moments.npy")
    meta_path = os.path.join(folder, "moments.json")
    fingerprint = json.loads(json.dumps(dict(fingerprint)))
    if os.path.exists(meta_path) and os.path.exists(array_path):
        with open(meta_path) as f:
            if json.load(f) == fingerprint:
                return np.load(array_path, mmap_mode="r")
    moments = encode()
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        tmp = array_path + ".tmp.npy"
        np.save(tmp, moments)
        os.replace(tmp, array_path)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(fingerprint, f, indent=2, sort_keys=True)
        os.replace(meta_path + ".tmp", meta_path)
    return moments


class CachedMoments:
    """A pipeline built with ``with_index=True``, its images replaced by cached moments.

    Batches hold ``moments`` (the rows of the records' indices) and the pipeline's other
    entries except ``image`` and ``index``; ``get_state`` / ``set_state`` are the pipeline's,
    so a resumed run continues with the same records.
    """

    def __init__(self, pipeline: Iterator[dict[str, np.ndarray]], moments: np.ndarray):
        self._pipeline, self._moments = pipeline, moments

    def __iter__(self) -> CachedMoments:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._pipeline))
        index = batch.pop("index")
        batch.pop("image")
        batch[MOMENTS_KEY] = np.asarray(self._moments[index], np.float32)
        return batch

    def get_state(self) -> Any:
        return self._pipeline.get_state()

    def set_state(self, state: Any) -> None:
        self._pipeline.set_state(state)
