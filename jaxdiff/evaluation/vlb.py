"""The discrete-time variational bound of a DDPM in bits/dim (Ho et al. 2020, eq. 5).

    L = KL(q(x_{T-1} | x_0) || N(0, I))                                   (prior)
      + sum_{t=1}^{T-1} E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   (denoising terms)
      - E_q log p(x_0 | x_{t=0})                                          (decoder)

with diffusers' timestep indices 0..T-1 (x at index t has alphas_cumprod[t]). The reverse mean is
the posterior mean at the model's x_0 prediction; its variance is fixed ("fixed_small": the
posterior variance, "fixed_large": beta_t; Ho et al.) or learned ("learned_range", Nichol &
Dhariwal 2021: the model's output has 2C channels, the second half interpolating the two). At
t = 0 both fixed variances use the posterior variance of t = 1, as Ho et al.'s code does (the
posterior variance at t = 0 is 0). The decoder is Ho et al.'s discretised Gaussian over
``num_bins`` levels (the same bins as the ODE's dequantisation), or a Gaussian density for
continuous data (``num_bins=None``). Each expectation uses one draw of x_t per example and
timestep (``fold_in(fold_in(key, index), t)``); the sum over t is exact (T model calls).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdiff import diffusion
from jaxdiff.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from jaxdiff.schedules import DiscreteSchedule

ModelFn = Callable[..., jax.Array]


class VLBTerms(NamedTuple):
    """Per-example bound in bits/dim (each [B]): ``bpd`` = ``prior`` + ``denoising`` +
    ``decoder``."""

    bpd: np.ndarray
    prior: np.ndarray
    denoising: np.ndarray
    decoder: np.ndarray


def _tables(schedule: DiscreteSchedule):
    ac = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    ac_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), ac[:-1]])
    post_var = diffusion.q_posterior_variance(ac, ac_prev)
    log_post_clipped = jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]]))
    return ac, ac_prev, log_post_clipped


def vlb_term_fn(
    model_fn: ModelFn,
    *,
    schedule: DiscreteSchedule,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    num_bins: int | None = 256,
) -> Callable[..., jax.Array]:
    """``term(x0, t, keys, **cond) -> [B]``: the bound's term at integer timestep t (a traced
    scalar) in nats per dimension: the decoder NLL at t = 0, else the KL."""
    diffusion.check_prediction_type(prediction_type)
    if variance_type not in diffusion.VARIANCE_TYPES:
        raise ValueError(
            f"variance_type must be one of {diffusion.VARIANCE_TYPES}; got {variance_type!r}."
        )
    ac_all, ac_prev_all, log_post_clipped = _tables(schedule)

    def term(x0: jax.Array, t: jax.Array, keys: jax.Array, **cond: Any) -> jax.Array:
        ac_t, ac_prev = ac_all[t], ac_prev_all[t]
        alpha, sigma = jnp.sqrt(ac_t), jnp.sqrt(1.0 - ac_t)
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x0.shape[1:]))(keys)
        x_t = diffusion.q_sample(x0, noise, alpha, sigma)
        out = model_fn(x_t, jnp.full((x0.shape[0],), t, jnp.float32), **cond).astype(jnp.float32)
        var_values = None
        if variance_type == "learned_range":
            if out.shape[-1] != 2 * x0.shape[-1]:
                raise ValueError(
                    "variance_type='learned_range' needs a model output with 2x the data "
                    f"channels (mean, variance); got {out.shape[-1]} for {x0.shape[-1]}."
                )
            out, var_values = jnp.split(out, 2, axis=-1)
        x0_pred, _ = diffusion.to_x0_eps(out, x_t, alpha, sigma, prediction_type)
        model_mean, _ = diffusion.q_posterior(x0_pred, x_t, ac_t, ac_prev)
        true_mean, _ = diffusion.q_posterior(x0, x_t, ac_t, ac_prev)
        lo = log_post_clipped[t]
        if variance_type == "learned_range":
            logvar = diffusion.reverse_log_variance(
                ac_t, ac_prev, variance_type, var_values, min_log_variance=lo
            )
        else:
            logvar = diffusion.reverse_log_variance(ac_t, ac_prev, variance_type)
            logvar = jnp.where(t == 0, lo, logvar) * jnp.ones_like(x0)
        kl = mean_flat(normal_kl(true_mean, lo, model_mean, logvar))
        if num_bins is None:
            nll = 0.5 * (
                math.log(2 * math.pi) + logvar + jnp.square(x0 - model_mean) / jnp.exp(logvar)
            )
            nll = mean_flat(nll)
        else:
            nll = -mean_flat(
                discretized_gaussian_log_likelihood(
                    x0, mean=model_mean, log_scale=0.5 * logvar, bins=num_bins
                )
            )
        return jnp.where(t == 0, nll, kl)

    return term


def prior_term(x0: jax.Array, *, schedule: DiscreteSchedule) -> jax.Array:
    """KL(q(x_{T-1} | x_0) || N(0, I)) in nats per dimension, [B]."""
    ac = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[-1]
    mean = jnp.sqrt(ac) * x0
    return mean_flat(normal_kl(mean, jnp.log1p(-ac), 0.0, 0.0))


def vlb_bits_per_dim(
    model_fn: ModelFn,
    x0: Any,
    key: jax.Array,
    *,
    schedule: DiscreteSchedule,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    num_bins: int | None = 256,
    first_index: int = 0,
    timesteps_per_call: int = 10,
    progress: bool = False,
    **cond: Any,
) -> VLBTerms:
    """The variational bound in bits/dim of each example (see module doc).

    Args:
      model_fn: ``model_fn(x_t, t, **cond) -> output`` (variance-preserving contract).
      x0: data [B, ...] in [-1, 1] (on the ``num_bins`` grid, or continuous).
      key: PRNG key; example i uses ``fold_in(key, first_index + i)``.
      schedule: the model's discrete schedule.
      prediction_type: "epsilon", "sample" or "v_prediction".
      variance_type: "fixed_small", "fixed_large" or "learned_range".
      num_bins: levels of the discrete data; None for continuous data.
      first_index: global index of the batch's first example.
      timesteps_per_call: timesteps evaluated per jitted call (vmapped: the model sees
        ``timesteps_per_call`` x B examples at once).
      progress: show a progress bar over the T timesteps.
      **cond: per-example conditioning passed to model_fn.

    Returns:
      `VLBTerms` of float64 numpy arrays [B].
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"The discrete-time VLB needs a DiscreteSchedule; got {type(schedule).__name__} "
            "(use ode_bits_per_dim for continuous-time models)."
        )
    if num_bins is not None and (not isinstance(num_bins, int) or num_bins < 2):
        raise ValueError(f"num_bins must be an integer >= 2 or None; got {num_bins!r}.")
    x0 = jnp.asarray(x0, jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first_index + jnp.arange(len(x0)))
    if not isinstance(timesteps_per_call, int) or timesteps_per_call < 1:
        raise ValueError(f"timesteps_per_call must be >= 1; got {timesteps_per_call!r}.")
    term = vlb_term_fn(model_fn, schedule=schedule, prediction_type=prediction_type,
                       variance_type=variance_type, num_bins=num_bins)  # fmt: skip
    terms = jax.jit(jax.vmap(lambda t, x, k, c: term(x, t, k, **c), in_axes=(0, None, None, None)))
    num_t = schedule.num_train_timesteps
    chunks = [np.arange(i, min(i + timesteps_per_call, num_t), dtype=np.int32)
              for i in range(0, num_t, timesteps_per_call)]  # fmt: skip
    values = []  # [T, B] nats per dimension
    for t in tqdm(chunks, desc="VLB", unit="chunk", disable=not progress):
        n = len(t)
        if n < timesteps_per_call:  # keep one compiled shape
            t = np.concatenate([t, np.repeat(t[-1:], timesteps_per_call - n)])
        values.append(np.asarray(terms(jnp.asarray(t), x0, keys, cond), np.float64)[:n])
    values = np.concatenate(values) / math.log(2.0)
    decoder, denoising = values[0], values[1:].sum(0)
    prior = np.asarray(prior_term(x0, schedule=schedule), np.float64) / math.log(2.0)
    return VLBTerms(prior + denoising + decoder, prior, denoising, decoder)
