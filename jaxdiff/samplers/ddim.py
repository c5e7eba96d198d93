"""Denoising diffusion implicit models (Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids


class DDIMTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    alpha: jax.Array  # sqrt(ac_t)
    sigma: jax.Array  # sqrt(1 - ac_t)
    alpha_prev: jax.Array  # sqrt(ac_s), s the next (less noisy) timestep
    var_prev: jax.Array  # 1 - ac_s
    std_unit: jax.Array  # sigma_t(eta = 1) of eq. 16


class DDIMState(NamedTuple):
    x: jax.Array


@core.traceable("eta")
def ddim(
    schedule,
    num_steps: int | None = None,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    set_alpha_to_one: bool = True,
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
    """DDIM, Song et al. (2021), eq. 12, with stochasticity ``eta`` (eq. 16).

    x_s = sqrt(ac_s) x_0 + sqrt(1 - ac_s - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - ac_s) / (1 - ac_t)) sqrt(1 - ac_t / ac_s); eta = 0 is
    deterministic. On the spaced grids s = t - T // N (as diffusers, for every spacing); on a
    custom grid s is the next point. ``eta`` may be traced. Reproduces diffusers'
    ``DDIMScheduler``.
    """
    ac = core.alphas_cumprod(schedule, "ddim")
    core.check_prediction_type(prediction_type, "ddim")
    if timesteps is not None:
        ts = grids.custom_timesteps(timesteps, len(ac))
        prev = np.append(ts[1:], -1)
    else:
        ts = grids.timesteps(len(ac), num_steps, timestep_spacing, steps_offset=steps_offset)
        prev = ts - len(ac) // num_steps
    start = core.check_start(start_step, len(ts))
    final = np.float32(1.0) if set_alpha_to_one else ac[0]
    ac_t = ac[ts]
    ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    one = np.float32(1.0)
    tab = DDIMTables(
        t=core.f32(ts),
        alpha=core.f32(np.sqrt(ac_t)),
        sigma=core.f32(np.sqrt(one - ac_t)),
        alpha_prev=core.f32(np.sqrt(ac_prev)),
        var_prev=core.f32(one - ac_prev),
        std_unit=core.f32(np.sqrt((one - ac_prev) / (one - ac_t) * (one - ac_t / ac_prev))),
    )
    tab = core.at(tab, slice(start, None))
    process_x0 = core.x0_processor(
        clip_sample=clip_sample, clip_sample_range=clip_sample_range, thresholding=thresholding,
        dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
    )  # fmt: skip

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        x0, eps = diffusion.to_x0_eps(output, x, s.alpha, s.sigma, prediction_type)
        x0 = process_x0(x0)
        if use_clipped_model_output:
            eps = diffusion.eps_from_x0(x, x0, s.alpha, s.sigma)
        std = jnp.asarray(eta, jnp.float32) * s.std_unit  # sigma_t(eta), eq. 16
        x_prev = s.alpha_prev * x0 + jnp.sqrt(s.var_prev - std**2) * eps  # eq. 12
        if z is not None:
            x_prev = x_prev + std * z
        return DDIMState(x_prev)

    return core.Sampler(
        name="ddim",
        timesteps=ts[start:].astype(np.float64),
        stochastic=core.maybe_positive(eta),
        init=lambda noise: DDIMState(jnp.asarray(noise, jnp.float32)),
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=core.vp_of_alphas_cumprod(ac_t[start:]),
    )
