"""Per-sample random streams: sample i of a seed depends on (seed, i) only.

So an image is the same whatever batch it is drawn in (sample.py's --batch_size, the training
grid, benchmarks). Sample i's key is ``fold_in(key(seed), i)``; its initial noise x_T comes
from ``fold_in(that key, 2**32 - 1)``; the samplers draw their step noise from
``fold_in(that key, model call index)``, so the streams never meet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_INITIAL_NOISE_STREAM = 2**32 - 1  # a call index that no sampler reaches


def per_sample_keys(seed: int, start: int, count: int) -> jax.Array:
    """Keys of samples start .. start + count - 1, shape [count]."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + count))


def per_sample_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """x_T ~ N(0, I) of each sample from its own key, [len(keys), *shape]."""
    return jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(k, _INITIAL_NOISE_STREAM), shape)
    )(keys)
