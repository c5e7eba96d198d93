"""Optimizer factory: AdamW with linear warm-up, constant or cosine decay, global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LR_DECAYS = ("constant", "cosine")


def make_lr_schedule(
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    decay: str = "constant",
    total_steps: int | None = None,
    final_lr_fraction: float = 0.0,
) -> optax.Schedule:
    """Learning rate per step: linear warm-up from 0, then constant or cosine decay.

    lr(n) = learning_rate * n / warmup_steps for n < warmup_steps; afterwards ``learning_rate``
    ("constant") or a half cosine from ``learning_rate`` down to
    ``final_lr_fraction * learning_rate`` at ``total_steps`` ("cosine").

    Args:
      learning_rate: peak learning rate (> 0).
      warmup_steps: length of the linear warm-up (>= 0).
      decay: "constant" or "cosine".
      total_steps: last step of the cosine (needed for "cosine", > warmup_steps).
      final_lr_fraction: end value of the cosine as a fraction of the peak, in [0, 1].

    Returns:
      An optax schedule ``step -> lr``.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate}.")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}.")
    if decay not in LR_DECAYS:
        raise ValueError(f"Unknown learning-rate decay {decay!r}; allowed: {LR_DECAYS}.")
    if decay == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"decay='cosine' needs total_steps > warmup_steps; got total_steps={total_steps}, "
                f"warmup_steps={warmup_steps}."
            )
        if not 0.0 <= final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1]; got {final_lr_fraction}.")
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=final_lr_fraction * learning_rate,
        )
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, warmup_steps),
            optax.constant_schedule(learning_rate),
        ],
        boundaries=[warmup_steps],
    )


def _matrices_only(params: optax.Params) -> optax.Params:
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(
    *,
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay_all_params: bool = False,
    grad_clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW, optionally after clipping the gradient's global norm.

    Args:
      learning_rate: a float or a schedule (see :func:`make_lr_schedule`).
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's epsilon.
      weight_decay: decoupled weight decay (Loshchilov & Hutter), >= 0.
      decay_all_params: decay biases and norm scales too; by default only parameters with
        ndim > 1 (kernels, embeddings) are decayed.
      grad_clip_norm: clip gradients to this global L2 norm first; None disables clipping.

    Returns:
      The optax transformation.
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 or a schedule; got {learning_rate}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}.")
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise ValueError(f"grad_clip_norm must be > 0 or None; got {grad_clip_norm}.")
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"Adam betas must be in [0, 1); got b1={b1}, b2={b2}.")
    adamw = optax.adamw(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=None if decay_all_params else _matrices_only,
    )
    if grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw)
