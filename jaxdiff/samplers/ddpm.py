"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) on any timestep grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


class DDPMTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    alpha: jax.Array  # sqrt(ac_t)
    sigma: jax.Array  # sqrt(1 - ac_t)
    c_x0: jax.Array  # posterior mean coefficients (Ho et al. eq. 7)
    c_xt: jax.Array
    std_small: jax.Array  # sqrt(beta~_t), the posterior std
    std_large: jax.Array  # sqrt(beta_t)
    log_var_small: jax.Array  # the ends of the learned range (log beta~_t, log beta_t)
    log_var_large: jax.Array
    last: jax.Array  # 1.0 at t = 0 (no noise is added there)


class DDPMState(NamedTuple):
    x: jax.Array


def ddpm(
    schedule,
    num_steps: int | None = None,
    *,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    timesteps: Sequence[int] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """Ancestral sampling of Ho et al. (2020), Algorithm 2, on any timestep grid.

    x_s = mu~(x_0, x_t) + std z with the posterior mean of q(x_s | x_t, x_0) (eq. 7), x_0
    predicted (then clipped or thresholded), and the variance chosen by ``variance_type``:
    "fixed_small" (beta~_t), "fixed_large" (beta_t), or "learned_range" (Nichol & Dhariwal
    2021, eq. 15: the model returns twice the channels, last axis, v in [-1, 1] mixing the
    two logs). No noise is added at t = 0. Reproduces diffusers' ``DDPMScheduler`` (option
    names and defaults; ``timesteps=[...]`` as its custom grids, s = the next grid point).
    """
    ac = core.alphas_cumprod(schedule, "ddpm")
    core.check_prediction_type(prediction_type, "ddpm")
    core.check_one_of(variance_type, VARIANCE_TYPES, "variance_type")
    if timesteps is not None:
        ts = grids.custom_timesteps(timesteps, len(ac))
    else:
        ts = grids.timesteps(len(ac), num_steps, timestep_spacing, steps_offset=steps_offset)
    start = core.check_start(start_step, len(ts))
    prev = np.append(ts[1:], -1)
    ac_t = ac[ts]
    ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
    one = np.float32(1.0)
    alpha_step = ac_t / ac_prev
    beta = one - alpha_step
    var_small = np.maximum((one - ac_prev) / (one - ac_t) * beta, np.float32(1e-20))
    tab = DDPMTables(
        t=core.f32(ts),
        alpha=core.f32(np.sqrt(ac_t)),
        sigma=core.f32(np.sqrt(one - ac_t)),
        c_x0=core.f32(np.sqrt(ac_prev) * beta / (one - ac_t)),
        c_xt=core.f32(np.sqrt(alpha_step) * (one - ac_prev) / (one - ac_t)),
        std_small=core.f32(np.sqrt(var_small)),
        std_large=core.f32(np.sqrt(beta)),
        log_var_small=core.f32(np.log(var_small)),
        log_var_large=core.f32(np.log(beta)),
        last=core.f32(ts == 0),
    )
    tab = core.at(tab, slice(start, None))
    process_x0 = core.x0_processor(
        clip_sample=clip_sample, clip_sample_range=clip_sample_range, thresholding=thresholding,
        dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
    )  # fmt: skip

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        output, v = core.split_learned_variance(output, x)
        x0, _ = diffusion.to_x0_eps(output, x, s.alpha, s.sigma, prediction_type)
        x0 = process_x0(x0)
        mean = s.c_x0 * x0 + s.c_xt * x  # mu~_t(x_t, x_0), eq. 7
        std = core.ddpm_step_std(variance_type, v, output, x, s.std_small, s.std_large,
                                 s.log_var_small, s.log_var_large)  # fmt: skip
        return DDPMState(mean + (1.0 - s.last) * std * z)

    return core.Sampler(
        name="ddpm",
        timesteps=ts[start:].astype(np.float64),
        stochastic=True,
        init=lambda noise: DDPMState(jnp.asarray(noise, jnp.float32)),
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=core.vp_of_alphas_cumprod(ac_t[start:]),
    )
