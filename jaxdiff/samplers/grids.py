"""Every inference grid, as plain functions returning host arrays.

Timestep grids follow diffusers' ``set_timesteps`` for each scheduler family (their rounding
and dtypes decide which integer timestep the model sees), sigma grids follow Karras et al.
(2022) and Lu et al. (2022). Grids are descending (noisiest first). Samplers take their grid
from here; user grids (``timesteps=[...]``, ``sigmas=[...]``) are validated here too.

Spacings (Lin et al. 2023, Table 2): "leading" ``arange(N) * (T // N) + steps_offset``,
"trailing" ``round(arange(T, 0, -T / N)) - 1``, "linspace" ``round(linspace(0, T - 1, N))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def check_spacing(spacing: str) -> None:
    """Raise a ValueError unless ``spacing`` is one of ``SPACINGS``."""
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep_spacing {spacing!r}; allowed: {', '.join(SPACINGS)}.")


def check_num_steps(num_steps: int, num_train_timesteps: int | None = None) -> int:
    """Validate a step count: a Python int in [1, T]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps must be a Python int; got {num_steps!r}.")
    limit = num_train_timesteps
    if num_steps < 1 or (limit is not None and num_steps > limit):
        bound = f"[1, num_train_timesteps={limit}]" if limit is not None else ">= 1"
        raise ValueError(f"num_steps must be in {bound}; got {num_steps}.")
    return int(num_steps)


def check_in_range(ts: np.ndarray, num_train_timesteps: int, steps_offset: int) -> None:
    """Raise a ValueError if ``steps_offset`` pushed a grid timestep past T - 1."""
    if len(ts) and int(np.max(ts)) >= num_train_timesteps:
        raise ValueError(
            f"steps_offset={steps_offset} puts timestep {int(np.max(ts))} outside [0, "
            f"{num_train_timesteps - 1}]; use fewer steps or steps_offset=0."
        )


def timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", *, steps_offset: int = 0
) -> np.ndarray:
    """Integer timesteps [N], descending, as DDPM/DDIM/LCM-style ``set_timesteps`` builds them.

    For some N (e.g. 61 of 1000) diffusers' "trailing" arange yields N + 1 points, the last at
    t = -1 (which it then uses as the noisiest timestep); jaxdiff keeps the N-point grid.
    """
    check_spacing(spacing)
    n_train = num_train_timesteps
    check_num_steps(num_steps, n_train)
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, num_steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = n_train // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
        check_in_range(ts, n_train, steps_offset)
        return ts
    ratio = n_train / num_steps
    return np.round(np.arange(n_train, 0, -ratio))[:num_steps].astype(np.int64) - 1


def float_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str, *, steps_offset: int = 0
) -> np.ndarray:
    """Float32 timesteps [N] of the sigma-space schedulers (Euler, Heun): "linspace" is not
    rounded, as in diffusers' ``EulerDiscreteScheduler.set_timesteps``."""
    check_spacing(spacing)
    n_train = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, num_steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n_train // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float32)
        return ts + np.float32(steps_offset)
    ts = np.arange(n_train, 0, -n_train / num_steps)[:num_steps].round().astype(np.float32)
    return ts - np.float32(1.0)


def solver_timesteps(
    num_train_timesteps: int,
    num_steps: int,
    spacing: str,
    *,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Integer timesteps [N] of the multistep solvers (DPM-Solver, UniPC, DEIS): the first N
    points of an N + 1 point grid, ending before ``last_timestep`` (T unless clipped)."""
    check_spacing(spacing)
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = last // (num_steps + 1)
        ts = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:
        ts = np.arange(last, 0, -num_train_timesteps / num_steps)[:num_steps].round() - 1
    return ts.astype(np.int64)


def pndm_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str, *, steps_offset: int, skip_prk: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(prk_timesteps, plms_timesteps) as diffusers' ``PNDMScheduler.set_timesteps``.

    The Runge-Kutta warm-up evaluates the last 3 grid points twice with half-steps
    (12 calls); with ``skip_prk`` the second PLMS point is repeated instead.
    """
    check_spacing(spacing)
    n_train = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, num_steps).round().astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, num_steps) * (n_train // num_steps)).round() + steps_offset
    else:
        ratio = n_train / num_steps
        ts = np.round(np.arange(n_train, 0, -ratio))[:num_steps][::-1].astype(np.int64) - 1
    check_in_range(ts, n_train, steps_offset)
    if skip_prk:
        prk = np.array([], np.int64)
        plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
    else:
        half = n_train // num_steps // 2
        prk = np.array(ts[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
        prk = prk[:-1].repeat(2)[1:-1][::-1]
        plms = ts[:-3][::-1]
    return prk.astype(np.int64), plms.astype(np.int64)


def lcm_timesteps(
    num_train_timesteps: int, num_steps: int, *, original_steps: int = 50, strength: float = 1.0
) -> np.ndarray:
    """The LCM grid (Luo et al. 2023): N of the ``original_steps`` points k i - 1 (k = T //
    original_steps), evenly spaced in index, as diffusers' ``LCMScheduler.set_timesteps``."""
    if original_steps > num_train_timesteps:
        raise ValueError(
            f"original_inference_steps={original_steps} exceeds num_train_timesteps="
            f"{num_train_timesteps}."
        )
    k = num_train_timesteps // original_steps
    origin = np.arange(1, int(original_steps * strength) + 1) * k - 1
    if num_steps > original_steps or len(origin) // num_steps < 1:
        raise ValueError(
            f"num_steps={num_steps} needs at least as many LCM grid points; "
            f"original_inference_steps x strength = {original_steps} x {strength} gives "
            f"{len(origin)}."
        )
    origin = origin[::-1]
    index = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
    return origin[index].astype(np.int64)


# ----------------------------------------------------------------------------------------
# Sigma grids.


def schedule_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sqrt((1 - ac) / ac) at every training timestep, float32 [T], as diffusers computes it.

    A zero-terminal-SNR schedule has ac[-1] == 0; like diffusers' sigma-space schedulers we
    replace it by 2**-24 so that the largest sigma is finite.
    """
    ac = np.array(alphas_cumprod, np.float32)
    if ac[-1] == 0.0:
        ac[-1] = np.float32(2.0**-24)
    return ((np.float32(1.0) - ac) / ac) ** np.float32(0.5)


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0
) -> np.ndarray:
    """Karras et al. (2022) eq. 5: sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) -
    max^(1/rho)))^rho, float64 [N], descending, without the final 0."""
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(f"Need 0 < sigma_min <= sigma_max; got {sigma_min}, {sigma_max}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def lu_lambda_sigmas(log_sigmas: np.ndarray, num_steps: int) -> np.ndarray:
    """Sigmas uniform in log-sigma between the table's ends (DPM-Solver's uniform-lambda grid,
    Lu et al. 2022, as diffusers' ``use_lu_lambdas``), float64 [N], descending."""
    hi, lo = float(log_sigmas[-1]), float(log_sigmas[0])
    return np.exp(hi + np.linspace(0, 1, num_steps) * (lo - hi))


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep of a sigma, linear in log-sigma between the table's integers
    (diffusers' ``_sigma_to_t``).

    Args:
      sigma: sigmas to invert (host array).
      log_sigmas: log of the schedule's ascending sigma table, [T].
    """
    sigma = np.asarray(sigma, np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def final_sigma(final_sigmas_type: str, sigma_min: float) -> float:
    """The point after the last step: 0 ("zero") or the smallest sigma ("sigma_min")."""
    if final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(
            f"Unknown final_sigmas_type {final_sigmas_type!r}; allowed: "
            f"{', '.join(FINAL_SIGMAS_TYPES)}."
        )
    return 0.0 if final_sigmas_type == "zero" else float(sigma_min)


def init_noise_sigma(sigmas: np.ndarray, spacing: str) -> float:
    """diffusers' Euler/Heun ``init_noise_sigma``: sigma_max, or sqrt(sigma_max^2 + 1) for
    "leading" spacing."""
    top = np.float32(np.max(sigmas))
    return float(top if spacing in ("linspace", "trailing") else np.sqrt(top**2 + np.float32(1)))


def check_strictly_decreasing(grid: np.ndarray, what: str, hint: str) -> None:
    """Refuse a grid with a repeated or increasing point (a zero-length step)."""
    if np.any(np.diff(grid) >= 0):
        raise ValueError(f"{what} {hint}")


class SolverGrid(NamedTuple):
    """A grid in sigma: model timesteps [N] and sigmas [N + 1] (float32, with the final
    point)."""

    timesteps: np.ndarray
    sigmas: np.ndarray


def solver_grid(
    alphas_cumprod: np.ndarray,
    num_steps: int,
    *,
    spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    use_lu_lambdas: bool = False,
    final_sigmas_type: str = "zero",
    timesteps: Sequence[int] | None = None,
    lambda_min_clipped: float = -np.inf,
    karras_t: str = "round",
) -> SolverGrid:
    """The DPM-Solver / UniPC / DEIS grid as diffusers' multistep ``set_timesteps``.

    Args:
      alphas_cumprod: the training schedule's table [T].
      num_steps: N.
      spacing, steps_offset: the timestep spacing (ignored for Karras / Lu grids).
      use_karras_sigmas: Karras sigmas between the table's ends, timesteps by ``sigma_to_t``.
      use_lu_lambdas: sigmas uniform in log-sigma (Lu et al. 2022), timesteps likewise.
      final_sigmas_type: "zero" or "sigma_min" (the table's smallest sigma, or the Karras
        grid's last one) after the last step.
      timesteps: a custom integer grid instead of the spacing.
      lambda_min_clipped: drop the timesteps whose lambda is below this (DPM-Solver).
      karras_t: how fractional Karras / Lu timesteps become integers: "round", or "trunc"
        (diffusers' DPM-Solver skips its rounding for the cosine schedule; int64 truncates).
    """
    n_train = len(alphas_cumprod)
    if use_karras_sigmas and use_lu_lambdas:
        raise ValueError("Use at most one of use_karras_sigmas and use_lu_lambdas.")
    if timesteps is not None and (use_karras_sigmas or use_lu_lambdas):
        raise ValueError("timesteps= cannot be combined with use_karras_sigmas / use_lu_lambdas.")
    sig32 = schedule_sigmas(alphas_cumprod)
    log_sigmas = np.log(sig32)  # float32, as diffusers computes it (decides the int cast)
    sig_all = sig32.astype(np.float64)
    if timesteps is not None:
        ts = custom_timesteps(timesteps, n_train)
    else:
        ac = np.array(alphas_cumprod, np.float32)
        if ac[-1] == 0.0:
            ac[-1] = np.float32(2.0**-24)
        lam = np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1.0) - ac))
        clipped = int(np.searchsorted(lam[::-1], lambda_min_clipped))
        ts = solver_timesteps(
            n_train, num_steps, spacing, steps_offset=steps_offset, last_timestep=n_train - clipped
        )
    last = float(sig_all[0])
    if use_karras_sigmas or use_lu_lambdas:
        if use_karras_sigmas:
            sigmas = karras_sigmas(float(sig_all[0]), float(sig_all[-1]), num_steps)
        else:
            sigmas = lu_lambda_sigmas(log_sigmas, num_steps)
        ts = sigma_to_t(sigmas, log_sigmas)
        ts = (ts.round() if karras_t == "round" else np.trunc(ts)).astype(np.int64)
        last = float(sigmas[-1]) if use_karras_sigmas else last
    else:
        sigmas = np.interp(ts, np.arange(n_train), sig_all)
    grid = np.concatenate([sigmas, [final_sigma(final_sigmas_type, last)]]).astype(np.float32)
    check_strictly_decreasing(
        grid[:-1],
        f"The grid of num_steps={num_steps} with timestep_spacing={spacing!r} and "
        f"steps_offset={steps_offset}",
        # e.g. N = T with "linspace" repeats a timestep, "leading" with N >= T puts every
        # step at t = 0, a steps_offset can push one past T - 1 (clamped onto its
        # neighbour): a zero step in lambda, which the multistep formulas divide by.
        "gives repeated timesteps; use fewer steps or timestep_spacing='trailing'.",
    )
    return SolverGrid(ts, grid)


def sigma_grid(
    alphas_cumprod: np.ndarray,
    num_steps: int,
    *,
    spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    final_sigmas_type: str = "zero",
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
) -> SolverGrid:
    """The grid of the sigma-space samplers (Euler, Euler ancestral, Heun) as diffusers'
    ``EulerDiscreteScheduler.set_timesteps``: float32 fractional timesteps [N] and sigmas
    [N + 1] with the final point.

    Args:
      alphas_cumprod: the training schedule's table [T].
      num_steps: N.
      spacing, steps_offset: the timestep spacing of :func:`float_timesteps`.
      use_karras_sigmas: Karras sigmas between ``sigma_min`` / ``sigma_max`` (default: the
        spaced grid's ends), timesteps by ``sigma_to_t``.
      final_sigmas_type: "zero" or "sigma_min" (the table's smallest sigma).
      timesteps: a custom integer grid [N] instead of the spacing.
      sigmas: a custom sigma grid [N + 1] including its final point.
    """
    n_train = len(alphas_cumprod)
    table = schedule_sigmas(alphas_cumprod)
    log_sigmas = np.log(table)
    if sigmas is not None:
        grid = custom_sigmas(sigmas).astype(np.float32)
        return SolverGrid(sigma_to_t(grid[:-1], log_sigmas).astype(np.float32), grid)
    if timesteps is not None:
        if use_karras_sigmas:
            raise ValueError("timesteps= cannot be combined with use_karras_sigmas=True.")
        ts = custom_timesteps(timesteps, n_train).astype(np.float32)
    else:
        ts = float_timesteps(n_train, num_steps, spacing, steps_offset=steps_offset)
    grid = np.interp(ts, np.arange(n_train), table)
    if use_karras_sigmas:
        lo = sigma_min if sigma_min is not None else float(grid[-1])
        hi = sigma_max if sigma_max is not None else float(grid[0])
        grid = karras_sigmas(lo, hi, num_steps)
        ts = sigma_to_t(grid, log_sigmas).astype(np.float32)
    last = final_sigma(final_sigmas_type, float(table[0]))
    return SolverGrid(ts, np.concatenate([grid, [last]]).astype(np.float32))


# ----------------------------------------------------------------------------------------
# User grids and partial trajectories.


def custom_timesteps(values: Sequence[int], num_train_timesteps: int) -> np.ndarray:
    """A user timestep grid (diffusers' ``set_timesteps(timesteps=[...])``), validated:
    integers, strictly decreasing, in [0, T)."""
    ts = np.asarray(values)
    if ts.ndim != 1 or ts.size < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D list; got shape {ts.shape}.")
    if not np.all(np.equal(np.round(ts), ts)):
        raise ValueError(f"timesteps must be integers; got {ts.tolist()}.")
    ts = ts.astype(np.int64)
    if ts.min() < 0 or ts.max() >= num_train_timesteps:
        raise ValueError(
            f"timesteps must lie in [0, {num_train_timesteps - 1}]; got {ts.tolist()}."
        )
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps must be strictly decreasing; got {ts.tolist()}.")
    return ts


def custom_sigmas(values: Sequence[float]) -> np.ndarray:
    """A user sigma grid (diffusers' ``set_timesteps(sigmas=[...])``) with its final point,
    validated: at least two points, finite, strictly decreasing, the last >= 0."""
    s = np.asarray(values, np.float64)
    if s.ndim != 1 or s.size < 2:
        raise ValueError(
            "sigmas must be a 1-D list of at least two points (the grid and its final "
            f"sigma, e.g. 0.0); got shape {s.shape}."
        )
    if not np.all(np.isfinite(s)) or s[-1] < 0:
        raise ValueError(f"sigmas must be finite and >= 0; got {s.tolist()}.")
    if np.any(np.diff(s) >= 0):
        raise ValueError(f"sigmas must be strictly decreasing; got {s.tolist()}.")
    return s


def start_step_for_strength(num_steps: int, strength: float) -> int:
    """The first step of an image-to-image run (diffusers' img2img ``strength``): the
    sampler skips the noisiest ``num_steps - int(num_steps * strength)`` steps.

    Args:
      num_steps: N, the steps of the full grid.
      strength: in (0, 1]; 1 starts from pure noise, small values stay close to the image.

    Returns:
      ``start_step`` for the samplers, in [0, N).
    """
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}.")
    init = min(int(num_steps * strength), num_steps)
    start = max(num_steps - init, 0)
    if start >= num_steps:
        raise ValueError(
            f"strength={strength} with num_steps={num_steps} leaves no step to run; "
            "use a larger strength or more steps."
        )
    return start
