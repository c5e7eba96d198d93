"""Ancestral DDPM and DDIM sampling on discrete schedules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.diffusion import expand
from jaxdiff.samplers import base
from jaxdiff.samplers.base import Plan, Sampler, f32

_CLIP = {"clip_sample": True, "clip_sample_range": 1.0, **base.THRESHOLD_OPTIONS}
_GRID = {"timestep_spacing": "leading", "steps_offset": 0}
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def _x0_eps(output, x, row, prediction_type):
    return base.x0_eps_from_output(
        output, x, row["sqrt_ac"], row["sqrt_one_minus_ac"], prediction_type
    )


class DDPM(Sampler):
    """Ancestral sampling of Ho et al. (2020), Algorithm 2, on any timestep grid.

    x_{s} = mean(x_0, x_t) + std * z with the posterior mean of q(x_s | x_t, x_0), x_0 predicted
    (then clipped or thresholded), and the variance chosen by ``variance_type``:
    "fixed_small" (posterior variance), "fixed_large" (beta_t), or "learned_range"
    (Nichol & Dhariwal 2021: the model returns twice the channels, last axis). No noise is
    added at t = 0. Reproduces diffusers' ``DDPMScheduler`` (same option names and defaults).
    """

    name = "ddpm"
    options = {"variance_type": "fixed_small", **_CLIP, **_GRID}

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])
        if opts["variance_type"] not in VARIANCE_TYPES:
            raise ValueError(
                f"Unknown variance_type {opts['variance_type']!r}; allowed: "
                f"{', '.join(VARIANCE_TYPES)}."
            )

    def is_stochastic(self, opts):
        return True

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        ts = schedules.inference_timesteps(
            len(ac), num_steps, opts["timestep_spacing"], steps_offset=opts["steps_offset"]
        )
        prev = np.append(ts[1:], -1)
        ac_t = ac[ts]
        ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
        one = np.float32(1.0)
        beta_prod, beta_prod_prev = one - ac_t, one - ac_prev
        cur_alpha = ac_t / ac_prev
        cur_beta = one - cur_alpha
        variance = np.maximum(beta_prod_prev / beta_prod * cur_beta, np.float32(1e-20))
        tables = {
            "t": f32(ts),
            "sqrt_ac": np.sqrt(ac_t),
            "sqrt_one_minus_ac": np.sqrt(beta_prod),
            "c_x0": f32(np.sqrt(ac_prev) * cur_beta / beta_prod),
            "c_xt": f32(np.sqrt(cur_alpha) * beta_prod_prev / beta_prod),
            "min_log": f32(np.log(variance)),
            "max_log": f32(np.log(cur_beta)),
            "std_small": f32(np.sqrt(variance)),
            "std_large": f32(np.sqrt(cur_beta)),
            "add_noise": f32(ts > 0),
        }
        return Plan(tables, ts.astype(np.float64), 1.0)

    def update(self, state, output, row, noise, opts, prediction_type):
        x = state["x"]
        output, var_values = base.split_learned_variance(output, x)
        x0, _ = _x0_eps(output, x, row, prediction_type)
        x0 = base.threshold_x0(x0, opts)
        mean = row["c_x0"] * x0 + row["c_xt"] * x
        vt = opts["variance_type"]
        if vt == "learned_range":
            if var_values is None:
                raise ValueError(
                    "variance_type='learned_range' needs a model output with twice the input "
                    f"channels (last axis); got output shape {output.shape} for x {x.shape}."
                )
            frac = (var_values + 1.0) / 2.0
            std = jnp.exp(0.5 * (frac * row["max_log"] + (1.0 - frac) * row["min_log"]))
        else:
            std = row["std_small"] if vt == "fixed_small" else row["std_large"]
        return {"x": mean + row["add_noise"] * (std * noise)}


class DDIM(Sampler):
    """Denoising diffusion implicit models (Song et al. 2021), eq. 12, with eta.

    x_s = sqrt(ac_s) x_0 + sqrt(1 - ac_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ac_s) / (1 - ac_t) (1 - ac_t / ac_s)); eta = 0 is deterministic.
    The previous timestep is always t - T // N (as diffusers does, for every spacing).
    ``eta`` may be traced. Reproduces diffusers' ``DDIMScheduler``.
    """

    name = "ddim"
    options = {
        "eta": 0.0,
        "use_clipped_model_output": False,
        "set_alpha_to_one": True,
        **_CLIP,
        **_GRID,
    }
    traced_options = frozenset({"eta"})

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])

    def is_stochastic(self, opts):
        return base.maybe_positive(opts["eta"])

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        n_train = len(ac)
        ts = schedules.inference_timesteps(
            n_train, num_steps, opts["timestep_spacing"], steps_offset=opts["steps_offset"]
        )
        prev = ts - n_train // num_steps
        final = np.float32(1.0) if opts["set_alpha_to_one"] else ac[0]
        ac_t = ac[ts]
        ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
        one = np.float32(1.0)
        variance = (one - ac_prev) / (one - ac_t) * (one - ac_t / ac_prev)
        tables = {
            "t": f32(ts),
            "sqrt_ac": np.sqrt(ac_t),
            "sqrt_one_minus_ac": np.sqrt(one - ac_t),
            "sqrt_ac_prev": np.sqrt(ac_prev),
            "one_minus_ac_prev": one - ac_prev,
            "std_unit": f32(np.sqrt(variance)),
        }
        return Plan(tables, ts.astype(np.float64), 1.0)

    def update(self, state, output, row, noise, opts, prediction_type):
        x = state["x"]
        x0, eps = _x0_eps(output, x, row, prediction_type)
        x0 = base.threshold_x0(x0, opts)
        std = jnp.asarray(opts["eta"], jnp.float32) * row["std_unit"]
        if opts["use_clipped_model_output"]:
            eps = (x - row["sqrt_ac"] * x0) / row["sqrt_one_minus_ac"]
        direction = jnp.sqrt(row["one_minus_ac_prev"] - std**2) * eps
        x_prev = row["sqrt_ac_prev"] * x0 + direction
        if noise is not None:
            x_prev = x_prev + expand(std, x) * noise
        return {"x": x_prev}
