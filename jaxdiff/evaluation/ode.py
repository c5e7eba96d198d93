"""An adaptive Dormand-Prince 5(4) ODE solver (RK45) in JAX, jittable and vmappable.

The method, step-size controller and initial-step rule are those of scipy's
``solve_ivp(method="RK45")`` (Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving Ordinary
Differential Equations I", II.4): the fifth-order solution is propagated (local
extrapolation), the embedded fourth-order one estimates the error, whose RMS norm relative to
``atol + rtol * max(|y_n|, |y_n+1|)`` must be <= 1; the step then scales by
``0.9 * err^(-1/5)``, clipped to [0.2, 10] (and never grows right after a rejection). The last
stage is the next step's first (FSAL), so an accepted step costs 6 evaluations.

The loop is a ``lax.while_loop`` (no per-step host round trips). Under ``jax.vmap`` every
example keeps its own step size, and its result does not depend on the batch it is solved in.

Why not diffrax: it would be the solver to choose for a research code base, but it brings
equinox, lineax, optimistix and jaxtyping as runtime dependencies for one fixed-tableau
integrator, and its adaptive controller differs in details from scipy's, the reference most
likelihood code (score_sde) calls; this module is ~150 lines and tested against scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# Fifth- minus fourth-order weights (the seventh stage is f at the new point).
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


class ODESolution(NamedTuple):
    """Result of `dormand_prince`.

    Attributes:
      y: the state at t1 (same pytree as y0).
      num_steps: accepted steps.
      num_rejected: rejected step attempts.
      num_evals: evaluations of the vector field (scipy's ``nfev``).
      success: False when ``max_steps`` ran out before t1 (y is then the last state).
    """

    y: Any
    num_steps: jax.Array
    num_rejected: jax.Array
    num_evals: jax.Array
    success: jax.Array


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _start(f, t0, y0, direction, length, rtol, atol):
    """(f(t0, y0), the starting step): Hairer et al.'s rule (scipy's ``select_initial_step``,
    order 4). Its two evaluations share one traced call of f (a two-iteration loop)."""
    scale = atol + jnp.abs(y0) * rtol
    d0 = _rms(y0 / scale)

    def guess(f0):
        d1 = _rms(f0 / scale)
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-30))
        return jnp.minimum(h0, length), d1

    def evaluate(i, fs):
        h0 = guess(fs[0])[0] * i  # i = 0: f at (t0, y0); i = 1: at the trial point
        return fs.at[i].set(f(t0 + direction * h0, y0 + direction * h0 * fs[0]))

    fs = jax.lax.fori_loop(0, 2, evaluate, jnp.zeros((2, y0.shape[0]), y0.dtype))
    h0, d1 = guess(fs[0])
    d2 = _rms((fs[1] - fs[0]) / scale) / h0
    big = jnp.maximum(d1, d2)
    h1 = jnp.where(
        big <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / jnp.maximum(big, 1e-30)) ** 0.2
    )
    return fs[0], jnp.minimum(jnp.minimum(100 * h0, h1), length)


def _tableau(dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(A [7, 7], C [7], E [7]): the seventh row of A is the fifth-order weights, so the last
    stage is f at the new point."""
    a = np.zeros((7, 7))
    for i, row in enumerate([*_A, _B]):
        a[i, : len(row)] = row
    return jnp.asarray(a, dtype), jnp.asarray([*_C, 1.0], dtype), jnp.asarray(_E, dtype)


def _stages(f, t, y, f_t, h, tableau):
    """All seven stages (k_7 = f(t + h, y_new)) with one traced call of f inside a loop, so a
    large vector field (a U-Net) is traced and compiled once, not seven times."""
    a, c, _ = tableau

    def stage(i, k):
        return k.at[i].set(f(t + c[i] * h, y + h * (a[i] @ k)))

    k = jnp.zeros((7, y.shape[0]), y.dtype).at[0].set(f_t)
    k = jax.lax.fori_loop(1, 7, stage, k)
    return y + h * (a[6] @ k), k


def dormand_prince(
    fn: Callable[[jax.Array, Any], Any],
    y0: Any,
    t0: float | jax.Array,
    t1: float | jax.Array,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> ODESolution:
    """Integrate dy/dt = fn(t, y) from t0 to t1 with adaptive Dormand-Prince 5(4) steps.

    Args:
      fn: the vector field ``fn(t, y) -> dy/dt`` (same pytree structure as y).
      y0: the initial state (a pytree of float arrays).
      t0: start time.
      t1: end time (may be smaller than t0).
      rtol: relative tolerance.
      atol: absolute tolerance.
      max_steps: bound on step attempts (accepted + rejected).

    Returns:
      An `ODESolution`.
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0; got {rtol} and {atol}.")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}.")
    flat0, unravel = ravel_pytree(y0)
    dtype = flat0.dtype
    f = lambda t, y: ravel_pytree(fn(t, unravel(y)))[0].astype(dtype)  # noqa: E731
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    direction = jnp.where(t1 >= t0, 1.0, -1.0).astype(dtype)
    length = jnp.abs(t1 - t0)
    f0, h_abs = _start(f, t0, flat0, direction, length, rtol, atol)
    eps = jnp.finfo(dtype).eps
    tableau = _tableau(dtype)

    def cond(state):
        t, _, _, _, _, attempts, *_ = state
        return (direction * (t1 - t) > 0) & (attempts < max_steps)

    def body(state):
        t, y, f_t, h_abs, rejected, attempts, steps, rejections = state
        h_abs = jnp.maximum(h_abs, 10 * eps * jnp.maximum(jnp.abs(t), 1.0))
        t_new = t + direction * h_abs
        t_new = jnp.where(direction * (t_new - t1) > 0, t1, t_new)
        h = t_new - t
        y_new, k = _stages(f, t, y, f_t, h, tableau)
        f_new = k[6]
        scale = atol + jnp.maximum(jnp.abs(y), jnp.abs(y_new)) * rtol
        err_norm = _rms(h * (tableau[2] @ k) / scale)
        accept = err_norm < 1.0
        grow = jnp.where(err_norm == 0, _MAX_FACTOR, _SAFETY * jnp.maximum(err_norm, 1e-30) ** -0.2)
        grow = jnp.minimum(_MAX_FACTOR, grow)
        grow = jnp.where(rejected, jnp.minimum(1.0, grow), grow)
        shrink = jnp.maximum(_MIN_FACTOR, _SAFETY * jnp.maximum(err_norm, 1e-30) ** -0.2)
        h_next = jnp.abs(h) * jnp.where(accept, grow, shrink)
        return (
            jnp.where(accept, t_new, t),
            jnp.where(accept, y_new, y),
            jnp.where(accept, f_new, f_t),
            h_next.astype(dtype),
            ~accept,  # "step_rejected" of the attempt in progress, reset once one is accepted
            attempts + 1,
            steps + accept,
            rejections + (~accept),
        )

    zero = jnp.zeros((), jnp.int32)
    state = (t0, flat0, f0, h_abs.astype(dtype), jnp.zeros((), bool), zero, zero, zero)
    t, y, _, _, _, attempts, steps, rejections = jax.lax.while_loop(cond, body, state)
    success = direction * (t1 - t) <= 0
    # 1 at t0, 1 in the initial-step rule, 6 per attempt (FSAL reuses the last stage).
    return ODESolution(unravel(y), steps, rejections, 2 + 6 * attempts, success)
