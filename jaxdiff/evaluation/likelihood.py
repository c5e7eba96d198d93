"""Negative log-likelihood in bits/dim by the probability-flow ODE (Song et al. 2021).

The ODE is integrated in the variance-exploding variable y = x_t / alpha_t and the noise level
k = sigma_t / alpha_t (Karras et al.'s sigma), over u = log k:

    dy/du = k * eps_hat(alpha y, t(k)),   alpha = 1 / sqrt(1 + k^2),

which is the probability-flow ODE of every variance-preserving schedule (for y = x_0 + k eps,
dy/dk = -k grad log p_k(y) = E[eps | y]); t(k) is the model's own time at noise level k (for a
discrete schedule the inverse of its piecewise-linear ``karras_sigma``, for a continuous one a
bisection on its logSNR). Along a solution, d log p(y(u)) / du = -div v, so

    log p_x(x) = log N(alpha_T y_T; 0, I) + D log alpha_T + int_{u_0}^{u_T} div v du
                 - D log alpha_0,  with y_0 = x / alpha_0

(the two D log alpha terms change variables between x and y). The divergence is estimated by
Hutchinson's trace estimator with one Rademacher (or Gaussian) probe per example held fixed
along the path, or computed exactly from the D rows of the Jacobian (one forward and D
vector-Jacobian products; small D only). Reverse mode throughout: the U-Net's fused ops define
custom VJPs and have no forward-mode rule.

Discrete data (``num_bins`` levels on the grid -1 + 2i / (num_bins - 1), as jaxdiff's data
pipeline maps pixels) is uniformly dequantised around each grid value, x + U(-d/2, d/2) with
d = 2 / (num_bins - 1) (the bins of Ho et al.'s discretised decoder), and
bits/dim = -(log p(x_deq) + D log d) / (D log 2), an upper bound on the discrete model's NLL in
expectation. (score_sde scales 8-bit data by 255/256 instead, (x * 255 + u) / 256: its bins are
2/256 wide, 0.0056 bits/dim apart from these.) With ``num_bins=None`` the data is continuous and
bits/dim = -log p(x) / (D log 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.evaluation.ode import dormand_prince
from jaxdiff.schedules import CosineSchedule, DiscreteSchedule, EDMSchedule, VPLinearSchedule

ModelFn = Callable[..., jax.Array]
DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


class ODELikelihood(NamedTuple):
    """Per-example results of `ode_bits_per_dim` (each [B]).

    Attributes:
      bpd: bits per dimension.
      prior_bpd: the prior term's share, -log N(x_T) / (D log 2) (large if the ODE did not
        reach the prior).
      num_evals: vector-field evaluations of the ODE solver.
      success: False where the solver hit ``max_steps``.
    """

    bpd: jax.Array
    prior_bpd: jax.Array
    num_evals: jax.Array
    success: jax.Array


def default_time_range(schedule: Any) -> tuple[float, float]:
    """(t_0, t_T) the ODE runs over: the whole training range of the schedule's time.

    Discrete: (0, T - 1); VP linear: (1e-5, 1) as score_sde; cosine: (0, 1); EDM:
    (sigma_min, sigma_max).
    """
    if isinstance(schedule, DiscreteSchedule):
        return 0.0, float(schedule.num_train_timesteps - 1)
    if isinstance(schedule, VPLinearSchedule):
        return 1e-5, 1.0
    if isinstance(schedule, CosineSchedule):
        return 0.0, 1.0
    if isinstance(schedule, EDMSchedule):
        return schedule.sigma_min, schedule.sigma_max
    raise ValueError(f"Unsupported schedule {type(schedule).__name__}.")


def _time_of_k(schedule: Any, t_range: tuple[float, float]) -> Callable[[jax.Array], jax.Array]:
    """t(k): the schedule's time at noise level k = sigma / alpha."""
    if isinstance(schedule, DiscreteSchedule):
        sig = schedule.karras_sigmas()
        steps = jnp.arange(schedule.num_train_timesteps, dtype=jnp.float32)
        return lambda k: jnp.interp(k, sig, steps)
    lo, hi = t_range

    def bisect(k):  # logSNR(t) = -2 log k, logSNR decreasing in t
        target = -2.0 * jnp.log(k)

        def step(_, bounds):
            a, b = bounds
            mid = 0.5 * (a + b)
            above = schedule.log_snr(mid) > target
            return jnp.where(above, mid, a), jnp.where(above, b, mid)

        a, b = jax.lax.fori_loop(0, 40, step, (jnp.float32(lo), jnp.float32(hi)))
        return 0.5 * (a + b)

    return bisect


def _log_k_range(schedule: Any, t_range: tuple[float, float]) -> tuple[float, float]:
    t0, t1 = t_range
    if not t0 < t1:
        raise ValueError(f"t_range must be (t_0, t_T) with t_0 < t_T; got {t_range}.")
    with jax.ensure_compile_time_eval():  # the schedule is a constant, also under jit
        return _checked_log_k_range(schedule, t0, t1)


def _checked_log_k_range(schedule: Any, t0: float, t1: float) -> tuple[float, float]:
    if isinstance(schedule, DiscreteSchedule):
        sig = jax.device_get(schedule.karras_sigmas())
        if not (sig[1:] > sig[:-1]).all() or not math.isfinite(float(sig[-1])):
            raise ValueError(
                "The ODE likelihood needs a schedule whose noise level sigma / alpha increases "
                "strictly and stays finite (a zero-terminal-SNR schedule has an infinite one)."
            )
        t_max = schedule.num_train_timesteps - 1
        if t0 < 0 or t1 > t_max:
            raise ValueError(f"t_range ({t0}, {t1}) must lie in [0, {t_max}] for this schedule.")
    log_k = lambda t: -0.5 * float(schedule.log_snr(jnp.float32(t)))  # noqa: E731
    return log_k(t0), log_k(t1)


def _rademacher(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.rademacher(key, shape, jnp.float32)


def ode_bits_per_dim(
    model_fn: ModelFn,
    x: jax.Array,
    key: jax.Array,
    *,
    schedule: Any,
    prediction_type: str = "epsilon",
    num_bins: int | None = 256,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    t_range: tuple[float, float] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    first_index: int = 0,
    **cond: Any,
) -> ODELikelihood:
    """Bits/dim of data under the probability-flow ODE of ``model_fn`` (see module doc).

    Args:
      model_fn: ``model_fn(x_t, t, **cond) -> output`` in the samplers' variance-preserving
        contract (jaxdiff's ``model_fn_for_sampling`` of a trained model).
      x: data [B, ...] in [-1, 1] (on the ``num_bins`` grid, or continuous).
      key: PRNG key; example i uses ``fold_in(key, first_index + i)`` for its dequantisation
        noise and divergence probe, so results do not depend on the batching.
      schedule: the model's schedule (discrete or continuous).
      prediction_type: "epsilon", "sample" or "v_prediction".
      num_bins: levels of the discrete data (256 for 8-bit images); None for continuous data.
      divergence: "hutchinson" (one probe per example) or "exact" (D VJPs: small D only).
      probe: Hutchinson probe distribution, "rademacher" or "gaussian".
      t_range: (t_0, t_T) in the schedule's time; default `default_time_range`.
      rtol: relative tolerance of the RK45 solver (score_sde uses 1e-5).
      atol: absolute tolerance.
      max_steps: bound on solver step attempts per example.
      first_index: global index of the batch's first example.
      **cond: per-example conditioning passed to model_fn (e.g. ``labels`` [B]).

    Returns:
      An `ODELikelihood` of [B] arrays.
    """
    diffusion.check_prediction_type(prediction_type)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}; got {divergence!r}.")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}; got {probe!r}.")
    if num_bins is not None and (not isinstance(num_bins, int) or num_bins < 2):
        raise ValueError(f"num_bins must be an integer >= 2 or None; got {num_bins!r}.")
    x = jnp.asarray(x, jnp.float32)
    t_range = default_time_range(schedule) if t_range is None else tuple(t_range)
    u0, u1 = _log_k_range(schedule, t_range)
    time_of_k = _time_of_k(schedule, t_range)
    shape, dim = x.shape[1:], math.prod(x.shape[1:])
    width = None if num_bins is None else 2.0 / (num_bins - 1)
    alpha0, alpha1 = (1.0 / math.sqrt(1.0 + math.exp(2 * u)) for u in (u0, u1))

    def velocity(u, y, cond1):
        k = jnp.exp(u)
        a = jax.lax.rsqrt(1.0 + k * k)
        x_t = (a * y)[None]
        out = model_fn(x_t, time_of_k(k)[None], **jax.tree.map(lambda c: c[None], cond1))
        _, eps = diffusion.to_x0_eps(out.astype(jnp.float32), x_t, a, k * a, prediction_type)
        return k * eps[0]

    def one(x1, index, cond1):
        k_deq, k_probe = jax.random.split(jax.random.fold_in(key, index))
        if width is not None:
            x1 = x1 + jax.random.uniform(k_deq, shape, jnp.float32, -width / 2, width / 2)
        eps = (_rademacher if probe == "rademacher" else jax.random.normal)(k_probe, shape)

        def field(u, state):
            # Reverse mode: jaxdiff's U-Net ops have custom VJPs, which forbid jvp.
            y, _ = state
            v, vjp = jax.vjp(lambda z: velocity(u, z, cond1), y)
            if divergence == "exact":  # trace from the D rows e_i^T J (one forward pass)
                basis = jnp.eye(dim, dtype=jnp.float32).reshape(dim, *shape)
                rows = jax.vmap(lambda e: vjp(e)[0])(basis)
                div = jnp.trace(rows.reshape(dim, dim))
            else:  # Hutchinson: eps^T J eps
                div = jnp.sum(vjp(eps)[0] * eps)
            return v, div

        state0 = (x1 / alpha0, jnp.zeros((), jnp.float32))
        sol = dormand_prince(field, state0, u0, u1, rtol=rtol, atol=atol, max_steps=max_steps)
        y_T, delta = sol.y
        z = alpha1 * y_T
        prior = -0.5 * jnp.sum(z * z) - 0.5 * dim * math.log(2 * math.pi)
        logp = prior + dim * math.log(alpha1) + delta - dim * math.log(alpha0)
        offset = 0.0 if width is None else dim * math.log(width)
        to_bits = 1.0 / (dim * math.log(2.0))
        return -(logp + offset) * to_bits, -prior * to_bits, sol.num_evals, sol.success

    index = first_index + jnp.arange(x.shape[0])
    bpd, prior, evals, ok = jax.vmap(one)(x, index, cond)
    return ODELikelihood(bpd, prior, evals, ok)
