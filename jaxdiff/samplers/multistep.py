"""Host-side grids shared by the multistep exponential-integrator samplers (DPM-Solver, UniPC).

Both integrate in lambda = log(alpha / sigma) on a grid of N timesteps plus a final sigma,
exactly as diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` build it.
"""

from __future__ import annotations

import numpy as np

from jaxdiff import schedules
from jaxdiff.samplers import base

SIGMA_OPTIONS = {
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_karras_sigmas": False,
    "final_sigmas_type": "zero",
}
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def check_sigma_options(opts: dict) -> None:
    """Validate the grid options shared by DPM-Solver and UniPC."""
    schedules.check_spacing(opts["timestep_spacing"])
    if opts["final_sigmas_type"] not in FINAL_SIGMAS_TYPES:
        raise ValueError(
            f"Unknown final_sigmas_type {opts['final_sigmas_type']!r}; allowed: "
            f"{', '.join(FINAL_SIGMAS_TYPES)}."
        )


def lambda_grid_timesteps(
    n_train: int, num_steps: int, opts: dict, *, last_timestep: int | None = None
) -> np.ndarray:
    """Integer timesteps [N] of the N + 1 point grids used by the multistep solvers."""
    last = n_train if last_timestep is None else last_timestep
    spacing = opts["timestep_spacing"]
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = last // (num_steps + 1)
        ts = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1] + opts["steps_offset"]
    else:
        ts = np.arange(last, 0, -n_train / num_steps)[:num_steps].round() - 1
    return ts.astype(np.int64)


def sigma_grid(
    ac: np.ndarray, ts: np.ndarray, num_steps: int, opts: dict, *, karras_t: str = "round"
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [N], sigmas [N + 1] float32) with the final sigma appended.

    ``karras_t``: how the fractional timesteps of a Karras grid become the integers the model
    sees: "round", or "trunc" (diffusers' DPM-Solver skips its rounding for the cosine
    schedule, and its int64 cast then truncates).
    """
    sig32 = base.sigma_table(ac)
    log_sigmas = np.log(sig32)  # float32, as diffusers computes it (decides the int cast)
    sig_all = sig32.astype(np.float64)
    sigma_min_train = float(sig_all[0])
    if opts["use_karras_sigmas"]:
        sigmas = schedules.karras_sigma_grid(float(sig_all[0]), float(sig_all[-1]), num_steps)
        ts = schedules.sigma_to_t(sigmas, log_sigmas)
        ts = ts.round() if karras_t == "round" else np.trunc(ts)
        last = sigmas[-1]
    else:
        sigmas = np.interp(ts, np.arange(len(sig_all)), sig_all)
        last = sigma_min_train
    final = 0.0 if opts["final_sigmas_type"] == "zero" else last
    grid = np.concatenate([sigmas, [final]]).astype(np.float32)
    if np.any(np.diff(grid[:-1]) >= 0):
        # e.g. N = T with "linspace" repeats a timestep, "leading" with N >= T puts every
        # step at t = 0, a steps_offset can push one past T - 1 (clamped onto its
        # neighbour): a zero step in lambda, which the multistep formulas divide by.
        raise ValueError(
            f"num_steps={num_steps} with timestep_spacing={opts['timestep_spacing']!r} and "
            f"steps_offset={opts['steps_offset']} gives repeated timesteps (a zero-length "
            "step); use fewer steps or timestep_spacing='trailing'."
        )
    return ts, grid


def alpha_sigma_lambda(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VP (alpha, sigma, lambda) of Karras sigmas, float64 (sigma 0 gives lambda = +inf)."""
    s = sigmas.astype(np.float64)
    alpha = 1.0 / np.sqrt(s**2 + 1.0)
    sigma = s * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    return alpha, sigma, lam
