"""Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids


class HeunTables(NamedTuple):
    """Per model call: N steps take 2N - 1 calls, the last step (to sigma = 0) being Euler."""

    t: jax.Array  # [K] model timestep
    first: jax.Array  # 1.0 at a step's first stage (Euler predictor), 0.0 at its correction
    sigma_eval: jax.Array  # the noise level the model sees: sigma_i, or sigma_{i+1}
    sigma: jax.Array  # the step's ends sigma_i -> sigma_{i+1}
    sigma_next: jax.Array


class HeunState(NamedTuple):
    x: jax.Array  # x_i, or the Euler prediction x'_{i+1} after a first stage
    x_start: jax.Array  # x_i (after churn, for EDM) at the start of the current step
    d: jax.Array  # d_i = (x_i - D(x_i; sigma_i)) / sigma_i of the first stage
    sigma_hat: jax.Array  # the step's starting noise level (sigma_i, raised by EDM churn)


def heun_tables(ts: np.ndarray, sigmas: np.ndarray, start: int = 0) -> HeunTables:
    """The calls of Heun's method on a grid of N timesteps and N + 1 sigmas (from step
    ``start``): (first stage of step i), then (correction of step i, first stage of i + 1).
    Host float32 arrays."""
    rows = []
    for i in range(start, len(ts)):
        rows.append((ts[i], 1.0, sigmas[i], sigmas[i], sigmas[i + 1]))
        if i < len(ts) - 1:
            rows.append((ts[i + 1], 0.0, sigmas[i + 1], sigmas[i], sigmas[i + 1]))
    return HeunTables(*(np.asarray(col, np.float32) for col in zip(*rows, strict=True)))


def heun_init(x: jax.Array) -> HeunState:
    """The Heun state before the first call."""
    return HeunState(x=x, x_start=x, d=jnp.zeros_like(x), sigma_hat=jnp.float32(0.0))


def heun_step(state: HeunState, s: HeunTables, x0: jax.Array) -> HeunState:
    """One call of Heun's method with the model's x_0 prediction D at (state.x, sigma_eval).

    First stage: d_i = (x_i - D) / sigma_hat, Euler x'_{i+1} = x_i + (sigma_{i+1} - sigma_hat)
    d_i. Correction: d' = (x'_{i+1} - D) / sigma_{i+1}, x_{i+1} = x_i + (sigma_{i+1} -
    sigma_hat) (d_i + d') / 2 (the trapezoidal rule, Karras et al. Alg. 1 lines 7-8).
    """
    first = s.first > 0.5
    d = (state.x - x0) / s.sigma_eval
    dt = s.sigma_next - state.sigma_hat
    x_euler = state.x + d * dt
    x_trapezoid = state.x_start + 0.5 * (state.d + d) * dt
    return HeunState(
        x=jnp.where(first, x_euler, x_trapezoid),
        x_start=jnp.where(first, state.x, state.x_start),
        d=jnp.where(first, d, state.d),
        sigma_hat=state.sigma_hat,
    )


def heun(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    timesteps: Sequence[int] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1):
    2N - 1 model calls for N steps, the last step to sigma = 0 being an Euler step.
    Reproduces diffusers' ``HeunDiscreteScheduler`` (note its default betas are the Stable
    Diffusion ones: pass the schedule you trained with), with custom ``timesteps`` and
    ``set_begin_index`` as ``start_step``.
    """
    ac = core.alphas_cumprod(schedule, "heun")
    core.check_prediction_type(prediction_type, "heun")
    grid = grids.sigma_grid(
        ac, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
        use_karras_sigmas=use_karras_sigmas, timesteps=timesteps,
    )  # fmt: skip
    start = core.check_start(start_step, num_steps)
    host = heun_tables(grid.timesteps, grid.sigmas, start)
    tab = jax.tree.map(jnp.asarray, host)
    process_x0 = core.x0_processor(clip_sample=clip_sample, clip_sample_range=clip_sample_range)

    def model_input(state, k, z):
        return state, core.ve_model_input(state.x, tab.sigma_eval[k]), tab.t[k]

    def update(state, k, output, z):
        s = core.at(tab, k)
        x0 = diffusion.x0_from_ve_output(output, state.x, s.sigma_eval, prediction_type)
        return heun_step(state._replace(sigma_hat=s.sigma), s, process_x0(x0))

    sigma0 = float(grid.sigmas[start])
    noise_sigma = grids.init_noise_sigma(grid.sigmas, timestep_spacing)
    scale = core.start_scale(sigma0, start, noise_sigma)
    return core.Sampler(
        name="heun",
        timesteps=host.t.astype(np.float64),
        stochastic=False,
        init=lambda noise: heun_init(jnp.asarray(noise, jnp.float32) * jnp.float32(scale)),
        model_input=model_input,
        update=update,
        tables=tab,
        levels=core.vp_of_sigma(host.sigma_eval),
        ve_state=True,
        init_noise_sigma=noise_sigma,
        sigmas=grid.sigmas,
    )
