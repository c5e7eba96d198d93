"""The EDM sampler: Karras et al. (2022), Algorithm 2 (deterministic and stochastic Heun)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids
from jaxdiff.samplers.heun import heun_init, heun_step, heun_tables
from jaxdiff.schedules import DiscreteSchedule, EDMSchedule


@core.traceable("S_churn", "S_tmin", "S_tmax", "S_noise")
def edm(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "sample",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    start_step: int = 0,
) -> core.Sampler:
    """Karras et al. (2022), Algorithm 2, as NVlabs/edm's ``edm_sampler``.

    Heun's method on the grid sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, then 0; 2N - 1 model calls. With ``S_churn`` > 0 each step
    first raises sigma to sigma_hat = (1 + gamma) sigma, gamma = min(S_churn / N, sqrt(2) - 1)
    for sigma in [S_tmin, S_tmax], adding fresh noise of std sqrt(sigma_hat^2 - sigma^2)
    S_noise (lines 4-6). The churn options may be traced.

    Works with an ``EDMSchedule`` (the model time is sigma itself; wrap an EDM-preconditioned
    denoiser as a "sample"-predicting model_fn of the variance-preserving input; sigma_min,
    sigma_max and rho default to the schedule's) and with a ``DiscreteSchedule`` (the model
    time is the fractional timestep of sigma, interpolated in log-sigma as diffusers does;
    the range defaults to the table's, rho to 7).
    """
    if not isinstance(schedule, EDMSchedule | DiscreteSchedule):
        raise ValueError(
            "Sampler 'edm' needs a schedule of type EDMSchedule or DiscreteSchedule; "
            f"got {type(schedule).__name__}."
        )
    core.check_prediction_type(prediction_type, "edm")
    if num_steps < 2:
        raise ValueError("The edm sampler needs num_steps >= 2 (its grid has two ends).")
    if isinstance(schedule, EDMSchedule):
        lo, hi, rho_default, log_sigmas = schedule.sigma_min, schedule.sigma_max, schedule.rho, None
    else:
        table = grids.schedule_sigmas(core.alphas_cumprod(schedule, "edm"))
        lo, hi, rho_default, log_sigmas = float(table[0]), float(table[-1]), 7.0, np.log(table)
    lo = lo if sigma_min is None else sigma_min
    hi = hi if sigma_max is None else sigma_max
    sigmas = np.concatenate([grids.karras_sigmas(lo, hi, num_steps, rho or rho_default), [0.0]])
    start = core.check_start(start_step, num_steps)
    times = sigmas[:-1] if log_sigmas is None else grids.sigma_to_t(sigmas[:-1], log_sigmas)
    host = heun_tables(np.float32(times), sigmas, start)
    tab = jax.tree.map(jnp.asarray, host)

    def model_time(sigma):
        """sigma itself (EDM), or its fractional timestep, linear in log-sigma (diffusers)."""
        if log_sigmas is None:
            return sigma
        steps = jnp.arange(log_sigmas.shape[0], dtype=jnp.float32)
        return jnp.interp(jnp.log(sigma), core.f32(log_sigmas), steps)

    def model_input(state, k, z):
        s, first = core.at(tab, k), tab.first[k] > 0.5
        in_range = (S_tmin <= s.sigma) & (s.sigma <= S_tmax)
        gamma = jnp.where(in_range & first, jnp.minimum(S_churn / num_steps, math.sqrt(2) - 1), 0.0)
        sigma_hat = s.sigma + gamma * s.sigma  # Alg. 2 line 5
        x = state.x
        if z is not None:  # line 6: x_hat = x + sqrt(sigma_hat^2 - sigma^2) S_noise z
            x = x + jnp.sqrt(jnp.maximum(sigma_hat**2 - s.sigma**2, 0.0)) * S_noise * z
        sigma_eval = jnp.where(first, sigma_hat, s.sigma_next)
        t = jnp.where(first, model_time(sigma_eval), s.t)
        state = state._replace(x=x, sigma_hat=jnp.where(first, sigma_hat, state.sigma_hat))
        return state, core.ve_model_input(x, sigma_eval), t

    def update(state, k, output, z):
        s = core.at(tab, k)
        sigma_eval = jnp.where(s.first > 0.5, state.sigma_hat, s.sigma_next)
        x0 = diffusion.x0_from_ve_output(output, state.x, sigma_eval, prediction_type)
        return heun_step(state, s._replace(sigma_eval=sigma_eval), x0)

    scale = float(sigmas[start]) if start == 0 else core.start_scale(sigmas[start], start, 0.0)
    return core.Sampler(
        name="edm",
        timesteps=host.t.astype(np.float64),
        stochastic=core.maybe_positive(S_churn),
        init=lambda noise: heun_init(jnp.asarray(noise, jnp.float32) * jnp.float32(scale)),
        model_input=model_input,
        update=update,
        tables=tab,
        levels=core.vp_of_sigma(host.sigma_eval),
        ve_state=True,
        init_noise_sigma=float(sigmas[0]),
        sigmas=np.float32(sigmas),
    )
