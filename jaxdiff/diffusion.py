"""The forward process, parameterisation conversions and the Gaussian posterior.

Everything is written for the variance-preserving form x_t = alpha_t x_0 + sigma_t eps with
alpha_t^2 + sigma_t^2 = 1, so it serves discrete and continuous schedules alike: pass the
``alpha`` and ``sigma`` of the timestep (``schedule.alpha(t)``, ``schedule.sigma(t)``), as
scalars or per-example arrays of shape [B] (broadcast over the trailing axes of x).

Prediction types use diffusers' names: "epsilon", "sample" (x_0) and "v_prediction"
(v = alpha eps - sigma x_0, Salimans & Ho 2022).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def check_prediction_type(prediction_type: str) -> None:
    """Raise a ValueError unless ``prediction_type`` is one of ``PREDICTION_TYPES``."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}."
        )


def expand(c: Any, x: jax.Array) -> jax.Array:
    """Broadcast a scalar or per-example coefficient [B] against x [B, ...]."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def q_sample(x0: jax.Array, noise: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """Sample q(x_t | x_0) = N(alpha x_0, sigma^2 I) with the given standard-normal noise."""
    return expand(alpha, x0) * x0 + expand(sigma, x0) * noise


def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """x_0 = (x_t - sigma eps) / alpha."""
    return (x_t - expand(sigma, x_t) * eps) / expand(alpha, x_t)


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """eps = (x_t - alpha x_0) / sigma."""
    return (x_t - expand(alpha, x_t) * x0) / expand(sigma, x_t)


def v_from_x0_eps(x0: jax.Array, eps: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """v = alpha eps - sigma x_0."""
    return expand(alpha, x0) * eps - expand(sigma, x0) * x0


def x0_from_v(x_t: jax.Array, v: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """x_0 = alpha x_t - sigma v (uses alpha^2 + sigma^2 = 1)."""
    return expand(alpha, x_t) * x_t - expand(sigma, x_t) * v


def eps_from_v(x_t: jax.Array, v: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
    """eps = sigma x_t + alpha v (uses alpha^2 + sigma^2 = 1)."""
    return expand(sigma, x_t) * x_t + expand(alpha, x_t) * v


def score_from_eps(eps: jax.Array, sigma: Any) -> jax.Array:
    """Score of q(x_t): grad log q(x_t) = -eps / sigma."""
    return -eps / expand(sigma, eps)


def eps_from_score(score: jax.Array, sigma: Any) -> jax.Array:
    """eps = -sigma * score."""
    return -expand(sigma, score) * score


def to_x0_eps(
    output: jax.Array, x_t: jax.Array, alpha: Any, sigma: Any, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """Interpret a model output as (x_0, eps) according to ``prediction_type``."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, output, alpha, sigma), output
    if prediction_type == "sample":
        return output, eps_from_x0(x_t, output, alpha, sigma)
    return x0_from_v(x_t, output, alpha, sigma), eps_from_v(x_t, output, alpha, sigma)


def x0_from_ve_output(
    output: jax.Array, x: jax.Array, sigma: Any, prediction_type: str
) -> jax.Array:
    """x_0 from a model output at Karras sigma, for x = x_t / alpha_t (the variance-exploding
    variable x_0 + sigma eps that sigma-space samplers integrate).

    This is :func:`to_x0_eps` at alpha = 1 / sqrt(sigma^2 + 1), sigma_vp = sigma alpha on the
    model input x alpha, written in the simplified form diffusers' Euler/Heun schedulers use
    (epsilon: x - sigma eps; v: -sigma / sqrt(sigma^2 + 1) v + x / (sigma^2 + 1)), which keeps
    float32 parity with them when sigma is large.
    """
    check_prediction_type(prediction_type)
    sigma = expand(sigma, x)
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        return output * (-sigma / jnp.sqrt(sigma**2 + 1.0)) + x / (sigma**2 + 1.0)
    return output


def prediction_target(
    prediction_type: str, x0: jax.Array, eps: jax.Array, alpha: Any, sigma: Any
) -> jax.Array:
    """The regression target of a prediction type, given the clean data and the noise."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return v_from_x0_eps(x0, eps, alpha, sigma)


def convert(
    output: jax.Array,
    x_t: jax.Array,
    alpha: Any,
    sigma: Any,
    *,
    source: str,
    target: str,
) -> jax.Array:
    """Convert a model output between prediction types ("epsilon", "sample", "v_prediction")."""
    check_prediction_type(target)
    x0, eps = to_x0_eps(output, x_t, alpha, sigma, source)
    return prediction_target(target, x0, eps, alpha, sigma)


def q_posterior_mean_coefs(ac_t: Any, ac_prev: Any) -> tuple[jax.Array, jax.Array]:
    """Coefficients (c_x0, c_xt) of the posterior mean of q(x_s | x_t, x_0), s < t.

    With alphas_cumprod ``ac_t`` at t and ``ac_prev`` at s and beta = 1 - ac_t / ac_prev:
    mean = sqrt(ac_prev) beta / (1 - ac_t) x_0
         + sqrt(ac_t / ac_prev) (1 - ac_prev) / (1 - ac_t) x_t.
    """
    ac_t, ac_prev = jnp.asarray(ac_t, jnp.float32), jnp.asarray(ac_prev, jnp.float32)
    beta = 1.0 - ac_t / ac_prev
    c_x0 = jnp.sqrt(ac_prev) * beta / (1.0 - ac_t)
    c_xt = jnp.sqrt(1.0 - beta) * (1.0 - ac_prev) / (1.0 - ac_t)
    return c_x0, c_xt


def q_posterior_variance(ac_t: Any, ac_prev: Any) -> jax.Array:
    """Variance of q(x_s | x_t, x_0): (1 - ac_prev) / (1 - ac_t) * (1 - ac_t / ac_prev)."""
    ac_t, ac_prev = jnp.asarray(ac_t, jnp.float32), jnp.asarray(ac_prev, jnp.float32)
    return (1.0 - ac_prev) / (1.0 - ac_t) * (1.0 - ac_t / ac_prev)


def q_posterior(
    x0: jax.Array, x_t: jax.Array, ac_t: Any, ac_prev: Any
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_s | x_t, x_0) (Ho et al. 2020, eq. 6-7)."""
    c_x0, c_xt = q_posterior_mean_coefs(ac_t, ac_prev)
    mean = expand(c_x0, x_t) * x0 + expand(c_xt, x_t) * x_t
    return mean, q_posterior_variance(ac_t, ac_prev)


def reverse_log_variance(
    ac_t: Any,
    ac_prev: Any,
    variance_type: str = "fixed_small",
    model_var_values: jax.Array | None = None,
    *,
    min_log_variance: Any | None = None,
) -> jax.Array:
    """log variance of the reverse step p(x_s | x_t).

    Args:
      ac_t: alphas_cumprod at t.
      ac_prev: alphas_cumprod at the previous (smaller) timestep s (1 at the first step).
      variance_type: "fixed_small" (the posterior variance, clamped at 1e-20 as diffusers
        does), "fixed_large" (beta_t = 1 - ac_t / ac_prev, Ho et al. 2020) or
        "learned_range" (Nichol & Dhariwal 2021: interpolate between the two logs with the
        model's output v in [-1, 1]: frac = (v + 1) / 2).
      model_var_values: the model's variance output (learned_range only), shape like x.
      min_log_variance: overrides the lower end of the learned range (improved DDPM clips
        it to the posterior variance at t = 1, since it is 0 at t = 0).

    Returns:
      The log variance, broadcastable against x.
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(
            f"Unknown variance_type {variance_type!r}; allowed: {', '.join(VARIANCE_TYPES)}."
        )
    ac_t, ac_prev = jnp.asarray(ac_t, jnp.float32), jnp.asarray(ac_prev, jnp.float32)
    beta = 1.0 - ac_t / ac_prev
    small = jnp.log(jnp.maximum(q_posterior_variance(ac_t, ac_prev), 1e-20))
    if variance_type == "fixed_small":
        return small
    if variance_type == "fixed_large":
        return jnp.log(beta)
    if model_var_values is None:
        raise ValueError("variance_type='learned_range' needs model_var_values.")
    lo = small if min_log_variance is None else jnp.asarray(min_log_variance, jnp.float32)
    frac = (model_var_values.astype(jnp.float32) + 1.0) / 2.0
    return frac * expand(jnp.log(beta), frac) + (1.0 - frac) * expand(lo, frac)


def edm_preconditioning(
    sigma: Any, sigma_data: float = 0.5
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM preconditioning (Karras et al. 2022, Table 1): (c_skip, c_out, c_in, c_noise).

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    sd2 = sigma_data**2
    norm = jax.lax.rsqrt(jnp.square(sigma) + sd2)
    c_skip = sd2 * jnp.square(norm)
    c_out = sigma * sigma_data * norm
    c_in = norm
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise
