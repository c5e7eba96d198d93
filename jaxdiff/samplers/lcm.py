"""Latent consistency model sampling (Luo et al. 2023): multistep consistency sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids


class LCMTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    alpha: jax.Array  # sqrt(ac_t)
    sigma: jax.Array  # sqrt(1 - ac_t)
    c_skip: jax.Array  # consistency boundary condition at t (Song et al. 2023, eq. 9)
    c_out: jax.Array
    alpha_next: jax.Array  # sqrt(ac), sqrt(1 - ac) at the next grid point
    sigma_next: jax.Array
    last: jax.Array  # 1.0 at the final step (no noise is added)


class LCMState(NamedTuple):
    x: jax.Array


def lcm(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    original_inference_steps: int = 50,
    timestep_scaling: float = 10.0,
    set_alpha_to_one: bool = True,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    timesteps: Sequence[int] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """Multistep latent consistency sampling (Luo et al. 2023, Algorithm 1; Song et al. 2023,
    Algorithm 1): at each grid point the consistency function
    f(x_t, t) = c_skip(t) x_t + c_out(t) x_0(x_t, t), with c_skip = sd^2 / ((10 t)^2 + sd^2),
    c_out = 10 t / sqrt((10 t)^2 + sd^2), sd = 1/2 (``timestep_scaling`` = 10), jumps to x_0;
    then x_s = sqrt(ac_s) f + sqrt(1 - ac_s) z re-noises it to the next point (not after the
    last). For 1-8 steps with an LCM-distilled model. Reproduces diffusers' ``LCMScheduler``
    (its grid of ``original_inference_steps`` points, custom ``timesteps``, and
    ``set_begin_index`` as ``start_step``).
    """
    ac = core.alphas_cumprod(schedule, "lcm")
    core.check_prediction_type(prediction_type, "lcm")
    if timesteps is not None:
        ts = grids.custom_timesteps(timesteps, len(ac))
    else:
        ts = grids.lcm_timesteps(len(ac), num_steps, original_steps=original_inference_steps)
    start = core.check_start(start_step, len(ts))
    final = np.float32(1.0) if set_alpha_to_one else ac[0]
    ac_t = ac[ts]
    ac_next = np.append(ac[ts[1:]], final).astype(np.float32)
    scaled = ts.astype(np.float64) * timestep_scaling
    sd2 = 0.25  # sigma_data^2 of the boundary condition
    tab = LCMTables(
        t=core.f32(ts), alpha=core.f32(np.sqrt(ac_t)), sigma=core.f32(np.sqrt(1.0 - ac_t)),
        c_skip=core.f32(sd2 / (scaled**2 + sd2)), c_out=core.f32(scaled / np.sqrt(scaled**2 + sd2)),
        alpha_next=core.f32(np.sqrt(ac_next)), sigma_next=core.f32(np.sqrt(1.0 - ac_next)),
        last=core.f32(np.arange(len(ts)) == len(ts) - 1),
    )  # fmt: skip
    tab = core.at(tab, slice(start, None))
    process_x0 = core.x0_processor(
        clip_sample=clip_sample, clip_sample_range=clip_sample_range, thresholding=thresholding,
        dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
    )  # fmt: skip

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        x0, _ = diffusion.to_x0_eps(output, x, s.alpha, s.sigma, prediction_type)
        denoised = s.c_out * process_x0(x0) + s.c_skip * x  # f_theta(x_t, t)
        if z is None:  # a single step
            return LCMState(denoised)
        renoised = s.alpha_next * denoised + s.sigma_next * z
        return LCMState(jnp.where(s.last > 0, denoised, renoised))

    return core.Sampler(
        name="lcm",
        timesteps=ts[start:].astype(np.float64),
        stochastic=len(ts) - start > 1,
        init=lambda noise: LCMState(jnp.asarray(noise, jnp.float32)),
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=core.vp_of_alphas_cumprod(ac_t[start:]),
    )
