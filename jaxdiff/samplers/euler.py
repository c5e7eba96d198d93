"""Euler and ancestral Euler steps in Karras sigma space (Karras et al. 2022).

They integrate the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma for the
variance-exploding variable x = x_vp / alpha; the model sees the variance-preserving input
x / sqrt(sigma^2 + 1) and the (fractional) training timestep of sigma, as diffusers'
``scale_model_input`` arranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids


class EulerTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    sigma: jax.Array  # sigma_i
    sigma_next: jax.Array  # sigma_{i+1}


class EulerState(NamedTuple):
    x: jax.Array


def _start(grid: grids.SolverGrid, start: int, spacing: str) -> dict:
    """init / start fields of a sigma-space sampler that skips ``start`` steps."""
    sigma0 = float(grid.sigmas[start])
    scale = core.start_scale(sigma0, start, grids.init_noise_sigma(grid.sigmas, spacing))
    return dict(
        init=lambda noise: EulerState(jnp.asarray(noise, jnp.float32) * jnp.float32(scale)),
        levels=core.vp_of_sigma(grid.sigmas[start:-1]),
        ve_state=True,
        init_noise_sigma=grids.init_noise_sigma(grid.sigmas, spacing),
        sigmas=grid.sigmas,
    )


@core.traceable("s_churn", "s_tmin", "s_tmax", "s_noise")
def euler(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    final_sigmas_type: str = "zero",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without the
    2nd-order correction), with optional churn: sigma_hat = (1 + gamma) sigma, gamma =
    min(s_churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax], fresh noise of std
    sqrt(sigma_hat^2 - sigma^2) s_noise, applied after the model call as diffusers does.
    Reproduces diffusers' ``EulerDiscreteScheduler`` (custom ``timesteps`` / ``sigmas``,
    ``set_begin_index`` as ``start_step``). The churn options may be traced.
    """
    ac = core.alphas_cumprod(schedule, "euler")
    core.check_prediction_type(prediction_type, "euler")
    grid = grids.sigma_grid(
        ac, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
        use_karras_sigmas=use_karras_sigmas, sigma_min=sigma_min, sigma_max=sigma_max,
        final_sigmas_type=final_sigmas_type, timesteps=timesteps, sigmas=sigmas,
    )  # fmt: skip
    start = core.check_start(start_step, num_steps)
    tab = EulerTables(
        t=core.f32(grid.timesteps[start:]),
        sigma=core.f32(grid.sigmas[start:-1]),
        sigma_next=core.f32(grid.sigmas[start + 1 :]),
    )

    def model_input(state, k, z):
        return state, core.ve_model_input(state.x, tab.sigma[k]), tab.t[k]

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        in_range = (s_tmin <= s.sigma) & (s.sigma <= s_tmax)
        gamma = jnp.where(in_range, jnp.minimum(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
        sigma_hat = s.sigma * (gamma + 1.0)
        if z is not None:  # churn: raise the noise level to sigma_hat
            std = jnp.sqrt(jnp.maximum(sigma_hat**2 - s.sigma**2, 0.0))
            x = x + jnp.where(gamma > 0, z * s_noise * std, 0.0)
        # diffusers converts v-predictions at sigma (the model's input level), others at
        # sigma_hat.
        sigma_x0 = s.sigma if prediction_type == "v_prediction" else sigma_hat
        x0 = diffusion.x0_from_ve_output(output, x, sigma_x0, prediction_type)
        d = (x - x0) / sigma_hat  # dx/dsigma, Karras et al. eq. 4
        return EulerState(x + d * (s.sigma_next - sigma_hat))

    return core.Sampler(
        name="euler",
        timesteps=grid.timesteps[start:].astype(np.float64),
        stochastic=core.maybe_positive(s_churn),
        model_input=model_input,
        update=update,
        tables=tab,
        **_start(grid, start, timestep_spacing),
    )


def euler_ancestral(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    start_step: int = 0,
) -> core.Sampler:
    """Ancestral Euler steps (Karras et al. 2022's Euler with the DDPM-like noise split of
    k-diffusion's ``sample_euler_ancestral``): an Euler step to sigma_down, then noise of std
    sigma_up, sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2 and
    sigma_down = sigma_to^2 / sigma_from (= sqrt(sigma_to^2 - sigma_up^2)). Reproduces
    diffusers' ``EulerAncestralDiscreteScheduler``.
    """
    ac = core.alphas_cumprod(schedule, "euler_ancestral")
    core.check_prediction_type(prediction_type, "euler_ancestral", ("epsilon", "v_prediction"))
    grid = grids.sigma_grid(ac, num_steps, spacing=timestep_spacing, steps_offset=steps_offset)
    start = core.check_start(start_step, num_steps)
    s_from = grid.sigmas[start:-1].astype(np.float64)
    s_to = grid.sigmas[start + 1 :].astype(np.float64)
    # diffusers' sqrt(s_to^2 - s_up^2) cancels to a negative number (NaN) in float32 when
    # s_to << s_from (e.g. cosine betas: sigma_max ~2e4); it equals s_to^2 / s_from.
    ratio = s_to / s_from
    tab = AncestralTables(
        t=core.f32(grid.timesteps[start:]),
        sigma=core.f32(s_from),
        sigma_up=core.f32(s_to * np.sqrt(1.0 - ratio**2)),
        sigma_down=core.f32(s_to * ratio),
    )

    def model_input(state, k, z):
        return state, core.ve_model_input(state.x, tab.sigma[k]), tab.t[k]

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        x0 = diffusion.x0_from_ve_output(output, x, s.sigma, prediction_type)
        d = (x - x0) / s.sigma
        x = x + d * (s.sigma_down - s.sigma)  # deterministic part, to sigma_down
        return EulerState(x + z * s.sigma_up)  # then noise up to sigma_to

    return core.Sampler(
        name="euler_ancestral",
        timesteps=grid.timesteps[start:].astype(np.float64),
        stochastic=True,
        model_input=model_input,
        update=update,
        tables=tab,
        **_start(grid, start, timestep_spacing),
    )


class AncestralTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    sigma: jax.Array  # sigma_from
    sigma_up: jax.Array
    sigma_down: jax.Array
