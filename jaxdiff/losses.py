"""Per-example denoising losses, their weightings, and the hybrid VLB term.

All losses return one value per example, shape [B]; the train step reduces. They take a model
function and arrays (never a config): ``model_fn(x_t, t) -> output`` where t is the training
timestep [B] (float32; integral values for discrete schedules, the schedule's own time for
continuous ones) and the output is read according to ``prediction_type``.

Weightings follow Hang et al. 2023 ("Min-SNR"): a weighting is a function w(SNR) on the
x_0-space error, and the weight applied to the raw error of a prediction type p is
w / f_p with f_epsilon = SNR, f_sample = 1, f_v_prediction = SNR + 1 (because
|eps err|^2 = SNR |x0 err|^2 and |v err|^2 = (SNR + 1) |x0 err|^2). The weightings:

- "uniform": weight 1 on the raw error of the chosen prediction type (Ho et al.'s L_simple).
- "snr": w = SNR, i.e. the epsilon MSE whatever the parameterisation.
- "min_snr": w = min(SNR, gamma) (Hang et al. 2023).
- "p2": w = SNR / (k + SNR)^gamma, i.e. epsilon weight 1 / (k + SNR)^gamma (Choi et al. 2022).
- "edm": w = 1/sigma_data^2 + SNR, EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 with
  sigma = 1 / sqrt(SNR) (Karras et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    EDMSchedule,
    Schedule,
    VPLinearSchedule,
)

WEIGHTINGS = ("uniform", "snr", "min_snr", "p2", "edm")
ModelFn = Callable[..., jax.Array]


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}.")


def loss_weight(
    snr: jax.Array,
    *,
    prediction_type: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    sigma_data: float = 0.5,
) -> jax.Array:
    """Weight on the raw squared error of ``prediction_type`` at the given SNR (see module doc).

    Written in closed forms that stay finite at SNR = 0 (zero terminal SNR) where the
    weighting itself is finite there.

    Args:
      snr: alpha^2 / sigma^2, any shape.
      prediction_type: "epsilon", "sample" or "v_prediction".
      weighting: one of ``WEIGHTINGS``.
      min_snr_gamma: gamma of "min_snr".
      p2_k: k of "p2".
      p2_gamma: gamma of "p2".
      sigma_data: sigma_data of "edm".

    Returns:
      The weights, same shape as ``snr``.
    """
    _check_weighting(weighting)
    diffusion.check_prediction_type(prediction_type)
    snr = jnp.asarray(snr, jnp.float32)
    eps, x0 = prediction_type == "epsilon", prediction_type == "sample"
    if weighting == "uniform":
        return jnp.ones_like(snr)
    if weighting == "snr":
        return jnp.ones_like(snr) if eps else (snr if x0 else snr / (snr + 1.0))
    if weighting == "min_snr":
        if eps:
            return jnp.minimum(1.0, min_snr_gamma / snr)
        clipped = jnp.minimum(snr, min_snr_gamma)
        return clipped if x0 else clipped / (snr + 1.0)
    if weighting == "p2":
        base = jnp.power(p2_k + snr, -p2_gamma)
        return base if eps else (snr * base if x0 else snr * base / (snr + 1.0))
    w_x0 = 1.0 / sigma_data**2 + snr  # edm
    return w_x0 / snr if eps else (w_x0 if x0 else w_x0 / (snr + 1.0))


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over all axes but the first: [B, ...] -> [B]."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def sample_timesteps(
    key: jax.Array, batch_size: int, schedule: Schedule, *, t_min: float = 1e-5
) -> jax.Array:
    """Training times [B] (float32): uniform integers in [0, T) for a discrete schedule,
    uniform in [t_min, 1] for continuous VP schedules, log-normal sigmas for EDM."""
    if isinstance(schedule, DiscreteSchedule):
        t = jax.random.randint(key, (batch_size,), 0, schedule.num_train_timesteps)
        return t.astype(jnp.float32)
    if isinstance(schedule, EDMSchedule):
        return schedule.sample_sigma(key, (batch_size,))
    if isinstance(schedule, VPLinearSchedule | CosineSchedule):
        return t_min + (1.0 - t_min) * jax.random.uniform(key, (batch_size,), jnp.float32)
    raise TypeError(f"Unsupported schedule type {type(schedule).__name__}.")


def _alpha_sigma_snr(schedule: Schedule, t: jax.Array):
    if isinstance(schedule, DiscreteSchedule):
        ti = jnp.round(t).astype(jnp.int32)
        ac = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[ti]
        return jnp.sqrt(ac), jnp.sqrt(1.0 - ac), ac / (1.0 - ac)
    log_snr = schedule.log_snr(t)
    return schedule.alpha(t), schedule.sigma(t), jnp.exp(log_snr)


def diffusion_loss(
    model_fn: ModelFn,
    x0: jax.Array,
    key: jax.Array,
    *,
    schedule: Schedule,
    prediction_type: str = "epsilon",
    weighting: str = "uniform",
    t: jax.Array | None = None,
    noise: jax.Array | None = None,
    learned_variance: bool = False,
    vlb_weight: float = 0.001,
    **weighting_options: Any,
) -> jax.Array:
    """Denoising loss of a model on clean data, one value per example.

    Draws t (see :func:`sample_timesteps`) and eps ~ N(0, I), forms x_t = alpha x_0 + sigma eps,
    calls ``model_fn(x_t, t)``, and returns the weighted mean squared error to the target of
    ``prediction_type``. With ``learned_variance`` the model returns twice the channels
    (last axis: prediction, then variance values v in [-1, 1]) and the hybrid objective of
    Nichol & Dhariwal 2021 is used (discrete schedules only):
    L_hybrid = L_simple + lambda L_vlb, with L_vlb = sum_t L_t estimated as T * L_t at the
    sampled t (:func:`vlb_term`, bits per dimension, the mean held fixed by a stop-gradient
    so that this term trains only the variance) and lambda = ``vlb_weight``.

    Args:
      model_fn: ``model_fn(x_t, t) -> output``.
      x0: clean data [B, ...].
      key: PRNG key for t and the noise.
      schedule: a discrete or continuous schedule from :mod:`jaxdiff.schedules`.
      prediction_type: "epsilon", "sample" or "v_prediction".
      weighting: one of ``WEIGHTINGS`` (see :func:`loss_weight`).
      t: optional explicit times [B] instead of sampled ones.
      noise: optional explicit noise like x0 instead of sampled noise.
      learned_variance: add the VLB term for a learned-range variance output.
      vlb_weight: lambda of the hybrid objective (0.001 in Nichol & Dhariwal 2021).
      **weighting_options: ``min_snr_gamma``, ``p2_k``, ``p2_gamma``, ``sigma_data``.

    Returns:
      loss: float32 [B].
    """
    _check_weighting(weighting)
    diffusion.check_prediction_type(prediction_type)
    if learned_variance:
        check_learned_variance(schedule, prediction_type)
    k_t, k_n = jax.random.split(key)
    if t is None:
        t = sample_timesteps(k_t, x0.shape[0], schedule)
    if noise is None:
        noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    x0 = x0.astype(jnp.float32)
    alpha, sigma, snr = _alpha_sigma_snr(schedule, t)
    x_t = diffusion.q_sample(x0, noise, alpha, sigma)
    output = model_fn(x_t, t).astype(jnp.float32)
    _check_output_shape(output.shape, x0.shape, learned_variance)
    if learned_variance:
        output, var_values = jnp.split(output, 2, axis=-1)
    target = diffusion.prediction_target(prediction_type, x0, noise, alpha, sigma)
    w = loss_weight(snr, prediction_type=prediction_type, weighting=weighting, **weighting_options)
    loss = w * mean_flat(jnp.square(output - target))
    if learned_variance:
        vb = vlb_term(
            jax.lax.stop_gradient(output),
            var_values,
            x0,
            x_t,
            jnp.round(t).astype(jnp.int32),
            schedule=schedule,
            prediction_type=prediction_type,
        )
        loss = loss + vlb_weight * schedule.num_train_timesteps * vb
    return loss


def check_learned_variance(schedule: Schedule, prediction_type: str) -> None:
    """Raise a ValueError unless a learned-range variance can be trained on ``schedule``.

    The VLB is a sum over discrete steps, so the schedule must be a ``DiscreteSchedule``. With
    zero terminal SNR (alphas_cumprod[-1] = 0, ``rescale_betas_zero_snr``) an epsilon
    prediction gives no x_0 at the last step (x_0 = (x_t - sigma eps) / 0): its VLB term is
    undefined there.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            "learned_variance needs a DiscreteSchedule (the VLB is a sum over discrete steps); "
            f"got {type(schedule).__name__}."
        )
    ac = schedule.alphas_cumprod  # concrete when closed over, also inside jit
    if (
        prediction_type == "epsilon"
        and not isinstance(ac, jax.core.Tracer)
        and np.asarray(ac)[-1] == 0
    ):
        raise ValueError(
            "learned_variance with prediction_type='epsilon' needs alphas_cumprod > 0 at the "
            "last step (zero terminal SNR leaves x_0 undefined there); use "
            "prediction_type='v_prediction' or 'sample', or a schedule without "
            "rescale_betas_zero_snr."
        )


def _check_output_shape(output_shape, x0_shape, learned_variance: bool) -> None:
    channels = x0_shape[-1]
    want = (*x0_shape[:-1], 2 * channels) if learned_variance else tuple(x0_shape)
    if tuple(output_shape) == want:
        return
    if not learned_variance and tuple(output_shape) == (*x0_shape[:-1], 2 * channels):
        raise ValueError(
            f"The model returns {2 * channels} channels for {channels}-channel data (a learned "
            "variance); pass learned_variance=True to train it with the hybrid loss."
        )
    raise ValueError(
        f"The model output has shape {tuple(output_shape)}; expected {want} for data of shape "
        f"{tuple(x0_shape)}" + (" (prediction and variance values)." if learned_variance else ".")
    )


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: jax.Array, *, mean: jax.Array, log_scale: jax.Array, bins: int = 256
) -> jax.Array:
    """log P(x) of data in [-1, 1] quantised to ``bins`` levels under N(mean, exp(log_scale)^2).

    The edge bins extend to -inf / +inf (Ho et al. 2020, eq. 13). Uses log_ndtr for stability.
    """
    half_bin = 1.0 / (bins - 1)
    inv_std = jnp.exp(-log_scale)
    upper = inv_std * (x - mean + half_bin)
    lower = inv_std * (x - mean - half_bin)
    log_cdf_upper = jax.scipy.special.log_ndtr(upper)
    log_sf_lower = jax.scipy.special.log_ndtr(-lower)
    # log(Phi(u) - Phi(l)) = log Phi(u) + log(1 - exp(log Phi(l) - log Phi(u))).
    log_cdf_lower = jax.scipy.special.log_ndtr(lower)
    log_delta = log_cdf_upper + jnp.log(
        jnp.maximum(-jnp.expm1(log_cdf_lower - log_cdf_upper), 1e-12)
    )
    return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, log_delta))


def vlb_term(
    output: jax.Array,
    var_values: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    *,
    schedule: DiscreteSchedule,
    prediction_type: str = "epsilon",
) -> jax.Array:
    """L_t of the variational bound in bits per dimension, [B] (Nichol & Dhariwal 2021).

    For t > 0: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); for t = 0: the discretised
    decoder NLL. The model mean comes from ``output`` (pass it through stop_gradient for the
    hybrid objective, so only the variance learns from this term); the model variance
    interpolates, with frac = (v + 1) / 2, between the clipped posterior variance and beta_t.

    Args:
      output: the mean-part model output (interpreted by ``prediction_type``), like x0.
      var_values: the variance output v in [-1, 1], like x0.
      x0: clean data [B, ...].
      x_t: noisy input [B, ...].
      t: integer timesteps [B].
      schedule: the discrete schedule.
      prediction_type: how to read ``output``.

    Returns:
      float32 [B], bits per dimension.
    """
    ac = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    ac_prev_all = jnp.concatenate([jnp.ones((1,), jnp.float32), ac[:-1]])
    post_var = diffusion.q_posterior_variance(ac, ac_prev_all)
    # The posterior variance is 0 at t = 0; the learned range starts at its value at t = 1.
    log_post_clipped = jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]]))
    ac_t, ac_prev = ac[t], ac_prev_all[t]
    alpha, sigma = jnp.sqrt(ac_t), jnp.sqrt(1.0 - ac_t)
    x0_pred, _ = diffusion.to_x0_eps(output, x_t, alpha, sigma, prediction_type)
    true_mean, _ = diffusion.q_posterior(x0, x_t, ac_t, ac_prev)
    model_mean, _ = diffusion.q_posterior(x0_pred, x_t, ac_t, ac_prev)
    true_logvar = diffusion.expand(log_post_clipped[t], x0)
    model_logvar = diffusion.reverse_log_variance(
        ac_t, ac_prev, "learned_range", var_values, min_log_variance=log_post_clipped[t]
    )
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(x0, mean=model_mean, log_scale=0.5 * model_logvar)
    ) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)


def edm_loss(
    denoiser_fn: ModelFn,
    x0: jax.Array,
    key: jax.Array,
    *,
    schedule: EDMSchedule,
    sigma: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> jax.Array:
    """EDM training loss (Karras et al. 2022, eq. 8 with Table 1's choices), [B].

    sigma ~ exp(N(P_mean, P_std^2)); loss = lambda(sigma) |D(x_0 + sigma n; sigma) - x_0|^2
    averaged over dimensions, with ``denoiser_fn(x_noisy, sigma) -> D`` the preconditioned
    denoiser (see :func:`edm_denoiser`).
    """
    k_s, k_n = jax.random.split(key)
    if sigma is None:
        sigma = schedule.sample_sigma(k_s, (x0.shape[0],))
    if noise is None:
        noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    x0 = x0.astype(jnp.float32)
    x_noisy = x0 + diffusion.expand(sigma, x0) * noise
    denoised = denoiser_fn(x_noisy, sigma).astype(jnp.float32)
    return schedule.loss_weight(sigma) * mean_flat(jnp.square(denoised - x0))


def edm_denoiser(raw_fn: ModelFn, sigma_data: float = 0.5) -> ModelFn:
    """Wrap a raw network F(x_in, c_noise) into EDM's preconditioned denoiser D(x; sigma).

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), see
    :func:`jaxdiff.diffusion.edm_preconditioning`.
    """

    def denoiser(x: jax.Array, sigma: jax.Array) -> jax.Array:
        c_skip, c_out, c_in, c_noise = diffusion.edm_preconditioning(sigma, sigma_data)
        f = raw_fn(diffusion.expand(c_in, x) * x, c_noise).astype(jnp.float32)
        return diffusion.expand(c_skip, x) * x + diffusion.expand(c_out, x) * f

    return denoiser
