"""The pure train step ``(state, batch, key) -> (state, metrics)``.

Randomness never comes from host-side splitting. Per step the key is ``fold_in(key,
state.step)``; from it every example gets its own key, ``fold_in(k_examples, i)`` with ``i``
the example's index in the *global* batch. A loss that draws its noise, timesteps and
condition dropout from these per-example keys gives the same numbers however the batch is
split: over devices (jit with sharding, pmap), over processes, or into micro-batches for
gradient accumulation. A separate per-(micro-)batch key is provided for randomness that is
drawn for a whole batch at once (e.g. dropout masks inside the model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdiff.training.ema import EmaDecayFn, ema_update
from jaxdiff.training.state import TrainState

Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
"""``loss_fn(params, batch, example_keys, batch_key) -> (loss [B], aux)``.

``example_keys`` holds one PRNG key per example ([B]); ``batch_key`` is one key for the
(micro-)batch. ``aux`` maps names to per-example values [B] (or scalars); the step reports
their means.
"""
TrainStepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]


def batch_size_of(batch: Batch) -> int:
    """The leading dimension shared by all leaves of a batch; ValueError if they differ."""
    sizes = {int(x.shape[0]) for x in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"All batch leaves need the same leading (batch) size; got {sizes}.")
    return sizes.pop()


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per example: ``fold_in(key, index)`` for each global example index."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay_fn: EmaDecayFn | None = None,
    grad_accum_steps: int = 1,
    axis_name: str | None = None,
    learning_rate_fn: optax.Schedule | None = None,
) -> TrainStepFn:
    """Build the pure train step.

    One update: mean of ``loss_fn`` over the batch, gradient (accumulated over
    ``grad_accum_steps`` micro-batches if > 1), optimizer update, EMA update, step + 1.

    Micro-batch j holds examples j, j + k, j + 2k, ... of the (local) batch, so that each
    device's shard of a data-sharded batch contributes to every micro-batch without moving
    data. The mean over equal-size micro-batches equals the mean over the batch.

    Args:
      loss_fn: see :data:`LossFn`.
      optimizer: optax transformation (e.g. :func:`jaxdiff.training.make_optimizer`).
      ema_decay_fn: ``step -> decay`` (see :func:`jaxdiff.training.ema_decay_schedule`);
        None makes ``ema_params`` follow ``params`` exactly.
      grad_accum_steps: k >= 1 micro-batches per update; the batch size must be divisible
        by k (per device under pmap).
      axis_name: the pmap axis name when the step runs inside ``jax.pmap``: gradients and
        metrics are averaged over it and example indices are made global.
      learning_rate_fn: the optimizer's schedule, only to report ``learning_rate``.

    Returns:
      ``train_step(state, batch, key) -> (state, metrics)`` with scalar metrics ``loss``,
      ``grad_norm`` (before clipping), ``ema_decay``, optionally ``learning_rate``, and the
      means of the loss's aux values.
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be an int >= 1; got {grad_accum_steps!r}.")

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        k_examples, k_batches = jax.random.split(jax.random.fold_in(key, state.step))
        local_b = batch_size_of(batch)
        if local_b % grad_accum_steps:
            raise ValueError(
                f"Batch size {local_b} is not divisible by grad_accum_steps={grad_accum_steps}."
            )
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_b
        indices = offset + jnp.arange(local_b, dtype=jnp.int32)
        (loss, aux), grads = _loss_and_grads(
            loss_fn, state.params, batch, indices, k_examples, k_batches, grad_accum_steps
        )
        if axis_name is not None:
            loss, aux, grads = jax.lax.pmean((loss, aux, grads), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.zeros((), jnp.float32) if ema_decay_fn is None else ema_decay_fn(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_update(state.ema_params, params, decay),
            opt_state=opt_state,
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "ema_decay": decay}
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        metrics.update(aux)
        return new_state, metrics

    return train_step


def _loss_and_grads(loss_fn, params, batch, indices, k_examples, k_batches, k):
    """((mean loss, mean aux), grads) over the batch, accumulated over k micro-batches."""

    def mean_loss(p, b, idx):
        per_example, aux = loss_fn(p, b, example_keys(k_examples, idx), _batch_key(idx))
        return jnp.mean(per_example), {n: jnp.mean(v) for n, v in dict(aux).items()}

    def _batch_key(idx):
        return jax.random.fold_in(k_batches, idx[0])

    grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
    if k == 1:
        return grad_fn(params, batch, indices)

    def split(x):  # [B, ...] -> [k, B / k, ...], micro-batch j = rows j, j + k, ...
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    micro_batches = jax.tree.map(split, batch)
    micro_indices = split(indices)

    def body(carry, inputs):
        return jax.tree.map(jnp.add, carry, grad_fn(params, *inputs)), None

    first = jax.tree.map(lambda x: x[0], (micro_batches, micro_indices))
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, *first)
    )
    total, _ = jax.lax.scan(body, zeros, (micro_batches, micro_indices))
    return jax.tree.map(lambda x: x / k, total)
