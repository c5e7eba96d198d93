"""Samplers in Karras sigma space: Euler, Euler ancestral and Heun (Karras et al. 2022).

They integrate the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma for the
variance-exploding variable x = x_vp / alpha; the model sees the variance-preserving input
x / sqrt(sigma^2 + 1) and the (fractional) training timestep of sigma, as diffusers'
``scale_model_input`` arranges.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.samplers import base
from jaxdiff.samplers.base import Plan, Sampler, f32

_GRID = {"timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False}


def karras_timesteps(ac: np.ndarray, num_steps: int, opts: dict, *, sigma_min=None, sigma_max=None):
    """(timesteps [N], sigmas [N] float64) as diffusers' Euler/Heun ``set_timesteps``."""
    n_train = len(ac)
    spacing = opts["timestep_spacing"]
    schedules.check_spacing(spacing)
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, num_steps, dtype=np.float32)[::-1].copy()
    elif spacing == "leading":
        ratio = n_train // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float32) + opts[
            "steps_offset"
        ]
    else:
        ts = np.arange(n_train, 0, -n_train / num_steps)[:num_steps].round().astype(np.float32) - 1
    sig_all = base.sigma_table(ac)
    log_sigmas = np.log(sig_all)
    sigmas = np.interp(ts, np.arange(n_train), sig_all)
    if opts["use_karras_sigmas"]:
        lo = sigma_min if sigma_min is not None else float(sigmas[-1])
        hi = sigma_max if sigma_max is not None else float(sigmas[0])
        sigmas = schedules.karras_sigma_grid(lo, hi, num_steps)
        ts = schedules.sigma_to_t(sigmas, log_sigmas)
    return np.asarray(ts, np.float32), sigmas


def init_sigma(sigmas: np.ndarray, spacing: str) -> float:
    """diffusers' init_noise_sigma: sigma_max, or sqrt(sigma_max^2 + 1) for "leading"."""
    top = np.float32(np.max(sigmas))
    return float(top if spacing in ("linspace", "trailing") else np.sqrt(top**2 + np.float32(1)))


def x0_from_sigma_output(output, x, sigma, prediction_type):
    """x_0 from a model output at Karras sigma (x is the variance-exploding variable)."""
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        return output * (-sigma / jnp.sqrt(sigma**2 + 1.0)) + x / (sigma**2 + 1.0)
    return output


class Euler(Sampler):
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without the
    2nd-order correction), with optional churn ``s_churn``/``s_tmin``/``s_tmax``/``s_noise``
    applied as diffusers does (after the model call). Reproduces diffusers'
    ``EulerDiscreteScheduler``.
    """

    name = "euler"
    options = {
        **_GRID,
        "final_sigmas_type": "zero",
        "sigma_min": None,
        "sigma_max": None,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": math.inf,
        "s_noise": 1.0,
    }
    traced_options = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])
        if opts["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise ValueError(
                f"Unknown final_sigmas_type {opts['final_sigmas_type']!r}; allowed: zero, "
                "sigma_min."
            )

    def is_stochastic(self, opts):
        return base.maybe_positive(opts["s_churn"])

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        ts, sigmas = karras_timesteps(
            ac, num_steps, opts, sigma_min=opts["sigma_min"], sigma_max=opts["sigma_max"]
        )
        last = 0.0 if opts["final_sigmas_type"] == "zero" else float(base.sigma_table(ac)[0])
        sig = np.concatenate([sigmas, [last]]).astype(np.float32)
        tables = {
            "t": ts,
            "sigma": sig[:-1],
            "sigma_next": sig[1:],
            "num_steps": np.full(num_steps, num_steps, np.float32),
        }
        return Plan(tables, ts.astype(np.float64), init_sigma(sig, opts["timestep_spacing"]))

    def model_input(self, state, row, noise, opts):
        s = row["sigma"]
        return state, state["x"] / jnp.sqrt(s**2 + 1.0), row["t"]

    def update(self, state, output, row, noise, opts, prediction_type):
        x, sigma = state["x"], row["sigma"]
        gamma = jnp.where(
            (opts["s_tmin"] <= sigma) & (sigma <= opts["s_tmax"]),
            jnp.minimum(opts["s_churn"] / row["num_steps"], math.sqrt(2.0) - 1.0),
            0.0,
        )
        sigma_hat = sigma * (gamma + 1.0)
        if noise is not None:
            churn = jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0))
            x = x + jnp.where(gamma > 0, noise * opts["s_noise"] * churn, 0.0)
        sigma_in = sigma if prediction_type == "v_prediction" else sigma_hat
        x0 = x0_from_sigma_output(output, x, sigma_in, prediction_type)
        derivative = (x - x0) / sigma_hat
        return {"x": x + derivative * (row["sigma_next"] - sigma_hat)}


class EulerAncestral(Sampler):
    """Ancestral Euler steps (Karras et al. 2022's Euler with the DDPM-like noise split of
    k-diffusion's ``sample_euler_ancestral``): step to sigma_down by Euler, then add noise of
    std sigma_up, sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2.
    Reproduces diffusers' ``EulerAncestralDiscreteScheduler``.
    """

    name = "euler_ancestral"
    options = {"timestep_spacing": "linspace", "steps_offset": 0}
    prediction_types = ("epsilon", "v_prediction")

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])

    def is_stochastic(self, opts):
        return True

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        ts, sigmas = karras_timesteps(ac, num_steps, {**opts, "use_karras_sigmas": False})
        sig = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        s_from, s_to = sig[:-1].astype(np.float64), sig[1:].astype(np.float64)
        # diffusers' sqrt(s_to^2 - s_up^2) cancels to a negative number (NaN) in float32 when
        # s_to << s_from (e.g. cosine betas: sigma_max ~2e4); it equals s_to^2 / s_from.
        ratio = s_to / s_from
        s_up = s_to * np.sqrt(1.0 - ratio**2)
        s_down = s_to * ratio
        tables = {"t": ts, "sigma": sig[:-1], "sigma_up": f32(s_up), "sigma_down": f32(s_down)}
        return Plan(tables, ts.astype(np.float64), init_sigma(sig, opts["timestep_spacing"]))

    def model_input(self, state, row, noise, opts):
        s = row["sigma"]
        return state, state["x"] / jnp.sqrt(s**2 + 1.0), row["t"]

    def update(self, state, output, row, noise, opts, prediction_type):
        x, sigma = state["x"], row["sigma"]
        x0 = x0_from_sigma_output(output, x, sigma, prediction_type)
        derivative = (x - x0) / sigma
        x = x + derivative * (row["sigma_down"] - sigma)
        return {"x": x + noise * row["sigma_up"]}


class Heun(Sampler):
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1):
    2N - 1 model calls for N steps, the last step to sigma = 0 being an Euler step.
    Reproduces diffusers' ``HeunDiscreteScheduler`` (note its default betas are the
    Stable Diffusion ones: pass the schedule you trained with).
    """

    name = "heun"
    options = {**_GRID, "clip_sample": False, "clip_sample_range": 1.0}

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        ts, sigmas = karras_timesteps(ac, num_steps, opts)
        sig = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        tables = heun_tables(ts, sig)
        return Plan(
            tables, tables["t"].astype(np.float64), init_sigma(sig, opts["timestep_spacing"])
        )

    def init_state(self, x, opts):
        return {"x": x, "d": x * 0.0, "x_start": x, "dt": jnp.float32(0.0)}

    def model_input(self, state, row, noise, opts):
        s = row["sigma_in"]
        return state, state["x"] / jnp.sqrt(s**2 + 1.0), row["t"]

    def update(self, state, output, row, noise, opts, prediction_type):
        return heun_update(state, output, row, opts, prediction_type)


def heun_tables(ts: np.ndarray, sig: np.ndarray) -> dict[str, np.ndarray]:
    """Per-call rows of Heun's method: calls (first stage at step 0), then (second stage of
    step i-1, first stage of step i) pairs; the final step (to sigma[-1]) has no second stage.
    """
    n = len(ts)
    rows = []
    for i in range(n):
        rows.append((ts[i], sig[i], 1.0, sig[i], sig[i + 1]))
        if i < n - 1:
            rows.append((ts[i + 1], sig[i + 1], 0.0, sig[i], sig[i + 1]))
    cols = list(zip(*rows, strict=True))
    names = ("t", "sigma_in", "first", "sigma", "sigma_next")
    return {name: f32(col) for name, col in zip(names, cols, strict=True)}


def heun_update(state, output, row, opts, prediction_type):
    """One call of Heun's method: an Euler predictor step, or the trapezoidal correction."""
    x, first = state["x"], row["first"]
    sigma_in = row["sigma_in"]
    x0 = x0_from_sigma_output(output, x, sigma_in, prediction_type)
    if opts.get("clip_sample", False):
        x0 = jnp.clip(x0, -opts["clip_sample_range"], opts["clip_sample_range"])
    d = (x - x0) / sigma_in
    dt = row["sigma_next"] - row["sigma"]
    x_first = x + d * dt
    x_second = state["x_start"] + 0.5 * (state["d"] + d) * state["dt"]
    is_first = first > 0.5
    return {
        "x": jnp.where(is_first, x_first, x_second),
        "d": jnp.where(is_first, d, state["d"]),
        "x_start": jnp.where(is_first, x, state["x_start"]),
        "dt": jnp.where(is_first, dt, state["dt"]),
    }
