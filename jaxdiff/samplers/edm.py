"""The EDM sampler: Karras et al. (2022), Algorithm 2 (deterministic and stochastic Heun)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.samplers import base
from jaxdiff.samplers.base import Plan, Sampler, f32
from jaxdiff.samplers.euler import heun_tables, x0_from_sigma_output
from jaxdiff.schedules import DiscreteSchedule, EDMSchedule


class EDM(Sampler):
    """Karras et al. (2022), Algorithm 2, as in NVlabs/edm ``generate.py`` (``edm_sampler``).

    Heun's method on the sigma grid (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, then 0; 2N - 1 model calls. With ``S_churn`` > 0, each step
    first raises sigma to sigma_hat = (1 + gamma) sigma, gamma = min(S_churn / N, sqrt(2) - 1)
    for sigma in [S_tmin, S_tmax], adding fresh noise of std sqrt(sigma_hat^2 - sigma^2)
    S_noise. The churn options may be traced.

    Works with an ``EDMSchedule`` (the model time is sigma itself; wrap an EDM-preconditioned
    denoiser as a "sample"-predicting model_fn of the variance-preserving input) and with a
    ``DiscreteSchedule`` (the model time is the fractional timestep of sigma, interpolated in
    log-sigma as diffusers does; sigma_min/sigma_max default to the table's range).
    """

    name = "edm"
    options = {
        "sigma_min": None,
        "sigma_max": None,
        "rho": 7.0,
        "S_churn": 0.0,
        "S_tmin": 0.0,
        "S_tmax": math.inf,
        "S_noise": 1.0,
    }
    traced_options = frozenset({"S_churn", "S_tmin", "S_tmax", "S_noise"})
    schedule_types = (EDMSchedule, DiscreteSchedule)

    def check(self, opts, schedule, num_steps):
        if num_steps < 2:
            raise ValueError("The edm sampler needs num_steps >= 2 (its grid has two ends).")

    def is_stochastic(self, opts):
        return base.maybe_positive(opts["S_churn"])

    def _range(self, schedule, opts):
        if isinstance(schedule, EDMSchedule):
            lo, hi = schedule.sigma_min, schedule.sigma_max
        else:
            table = base.sigma_table(base.host_alphas_cumprod(schedule))
            lo, hi = float(table[0]), float(table[-1])
        lo = opts["sigma_min"] if opts["sigma_min"] is not None else lo
        hi = opts["sigma_max"] if opts["sigma_max"] is not None else hi
        return lo, hi

    def plan(self, schedule, num_steps, opts):
        lo, hi = self._range(schedule, opts)
        sig = np.concatenate([schedules.karras_sigma_grid(lo, hi, num_steps, opts["rho"]), [0.0]])
        times = _time_of_sigma_host(schedule, sig[:-1])
        tables = heun_tables(times, sig)
        tables["num_steps"] = np.full(len(tables["t"]), num_steps, np.float32)
        if isinstance(schedule, EDMSchedule):  # model time is sigma itself
            consts = {"sigma_is_time": np.float32(1.0), "log_sigmas": np.zeros(2, np.float32)}
        else:
            table = base.sigma_table(base.host_alphas_cumprod(schedule))
            consts = {"sigma_is_time": np.float32(0.0), "log_sigmas": np.log(table)}
        return Plan(tables, tables["t"].astype(np.float64), float(sig[0]), consts)

    def init_state(self, x, opts):
        zero = jnp.float32(0.0)
        return {"x": x, "d": x * 0.0, "x_start": x, "sigma_hat": zero}

    def model_input(self, state, row, noise, opts):
        x, sigma, first = state["x"], row["sigma"], row["first"] > 0.5
        in_range = (opts["S_tmin"] <= sigma) & (sigma <= opts["S_tmax"])
        gamma = jnp.minimum(opts["S_churn"] / row["num_steps"], math.sqrt(2.0) - 1.0)
        gamma = jnp.where(in_range & first, gamma, 0.0)
        sigma_hat = sigma + gamma * sigma
        if noise is not None:
            std = jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0)) * opts["S_noise"]
            x = x + std * noise
        # First stage: evaluate at (x_hat, sigma_hat); second stage: at (x_next, sigma_next).
        s_eval = jnp.where(first, sigma_hat, row["sigma_next"])
        t = jnp.where(first, _time_of_sigma(row, s_eval), row["t"])
        state = {**state, "x": x, "sigma_hat": jnp.where(first, sigma_hat, state["sigma_hat"])}
        return state, x / jnp.sqrt(s_eval**2 + 1.0), t

    def update(self, state, output, row, noise, opts, prediction_type):
        x, first = state["x"], row["first"] > 0.5
        sigma_hat = state["sigma_hat"]
        s_eval = jnp.where(first, sigma_hat, row["sigma_next"])
        denoised = x0_from_sigma_output(output, x, s_eval, prediction_type)
        d = (x - denoised) / s_eval
        dt = row["sigma_next"] - sigma_hat
        x_first = x + dt * d
        x_second = state["x_start"] + dt * (0.5 * state["d"] + 0.5 * d)
        return {
            "x": jnp.where(first, x_first, x_second),
            "d": jnp.where(first, d, state["d"]),
            "x_start": jnp.where(first, x, state["x_start"]),
            "sigma_hat": sigma_hat,
        }


def _time_of_sigma_host(schedule, sigmas: np.ndarray) -> np.ndarray:
    if isinstance(schedule, EDMSchedule):
        return f32(sigmas)
    log_sigmas = np.log(base.sigma_table(base.host_alphas_cumprod(schedule)).astype(np.float64))
    return f32(schedules.sigma_to_t(sigmas, log_sigmas))


def _time_of_sigma(row, sigma):
    """The model time of a (traced) sigma: sigma itself for EDM, else the fractional
    timestep, linear in log-sigma between the table's integers (diffusers' _sigma_to_t)."""
    log_sigmas = row["log_sigmas"]
    steps = jnp.arange(log_sigmas.shape[0], dtype=jnp.float32)
    t = jnp.interp(jnp.log(sigma), log_sigmas, steps)
    return jnp.where(row["sigma_is_time"] > 0, sigma, t)
