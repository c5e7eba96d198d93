"""Improved precision and recall (Kynkaanniemi et al. 2019) between two feature sets.

Each set spans a manifold estimate: the union of balls around its samples, the ball of sample
phi having the radius of phi's k-th nearest neighbour within the same set (k = 3 in the paper).
Precision is the fraction of generated samples that lie in the real manifold, recall the
fraction of real samples that lie in the generated one (a point on a ball's boundary counts as
inside, as in the reference implementation). Distances are squared Euclidean,
``|a|^2 + |b|^2 - 2 a.b`` in float32 at full matmul precision (as the reference computes them),
in row blocks split over the local devices, so N x N distance matrices are never held.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.evaluation.parallel import DataParallel

_HIGHEST = jax.lax.Precision.HIGHEST


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    ab = jnp.matmul(a, b.T, precision=_HIGHEST)
    aa, bb = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)
    return jnp.maximum(aa[:, None] + bb[None, :] - 2.0 * ab, 0.0)


def _radius_fn(k: int):
    def fn(ref: jax.Array, rows: jax.Array) -> jax.Array:
        # k + 1 smallest distances from each row to the set: itself (0) and its k neighbours.
        nearest = -jax.lax.top_k(-_squared_distances(rows, ref), k + 1)[0]
        return nearest[:, k]

    return fn


def _inside(ref_and_radii: tuple[jax.Array, jax.Array], rows: jax.Array) -> jax.Array:
    ref, radii = ref_and_radii
    return jnp.any(_squared_distances(rows, ref) <= radii[None, :], axis=1)


def _check(features: np.ndarray, name: str, k: int) -> np.ndarray:
    x = np.asarray(features, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} features must be [N, D]; got shape {x.shape}.")
    if len(x) <= k:
        raise ValueError(f"{name} features need more than k = {k} samples; got {len(x)}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} features contain NaN or infinite values.")
    return x


def manifold_radii(
    features: np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 1024,
    devices: Sequence[jax.Device] | None = None,
) -> np.ndarray:
    """Squared distance of every sample to its k-th nearest neighbour in the same set, [N]."""
    x = _check(features, "manifold", k)
    run = DataParallel(_radius_fn(k), batch_size=batch_size, devices=devices)
    return np.concatenate(run.map(run.replicate(jnp.asarray(x)), x))


def manifold_coverage(
    reference: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 1024,
    devices: Sequence[jax.Device] | None = None,
) -> float:
    """Fraction of ``queries`` inside the k-NN manifold of ``reference``."""
    ref = _check(reference, "reference", k)
    q = _check(queries, "query", 0)
    if q.shape[1] != ref.shape[1]:
        raise ValueError(f"Need features with equal D; got {ref.shape} and {q.shape}.")
    radii = manifold_radii(ref, k=k, batch_size=batch_size, devices=devices)
    run = DataParallel(_inside, batch_size=batch_size, devices=devices)
    inside = np.concatenate(run.map(run.replicate((jnp.asarray(ref), jnp.asarray(radii))), q))
    return float(inside.mean())


def precision_recall(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 1024,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, float]:
    """Improved precision and recall of generated features against real ones.

    Args:
      real_features: [N, D] features of real images.
      fake_features: [M, D] features of generated images.
      k: neighbourhood size of the manifold estimate (3 in the paper).
      batch_size: rows of each distance block (a block is batch_size x N floats).
      devices: devices to split the blocks over (default: the local devices).

    Returns:
      {"precision": fraction of fake in the real manifold, "recall": fraction of real in the
      fake manifold}.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    kw = dict(k=k, batch_size=batch_size, devices=devices)
    return {
        "precision": manifold_coverage(real_features, fake_features, **kw),
        "recall": manifold_coverage(fake_features, real_features, **kw),
    }
