"""The train state: a pytree of arrays only (step, params, EMA params, optimizer state).

The state holds no functions (no ``apply_fn``, no optimizer object), so it can be sharded,
donated, checkpointed with Orbax and restored into an abstract target built with
``jax.eval_shape``. The optimizer and the model live in the train step's closure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: number of optimizer updates done so far, int32 scalar.
      params: model parameters (float32).
      ema_params: exponential moving average of ``params`` (float32).
      opt_state: the optax state of the optimizer that trains ``params``.
    """

    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: optax.OptState


def create_train_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0 with the EMA equal to ``params``.

    The EMA gets its own buffers (a copy), so the state can be donated to a jitted step.

    Args:
      params: initial model parameters.
      optimizer: the optax transformation whose state is initialised here.

    Returns:
      The train state at step 0.
    """
    ema_params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=optimizer.init(params),
    )


def make_init_fn(
    init_params: Callable[[jax.Array], PyTree], optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """A pure ``init(key) -> TrainState`` from a parameter initialiser.

    Use it with ``jax.eval_shape`` (abstract state for shardings and checkpoint restore) and
    with ``jax.jit(..., out_shardings=...)`` (see :func:`jaxdiff.training.init_sharded_state`).

    Args:
      init_params: ``key -> params``, e.g. ``lambda k: model.init(k, x, t)["params"]``.
      optimizer: the optax transformation that will train the parameters.

    Returns:
      ``init(key) -> TrainState``.
    """

    def init(key: jax.Array) -> TrainState:
        return create_train_state(init_params(key), optimizer)

    return init
