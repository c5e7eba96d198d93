"""Multistep DPM-Solver (Lu et al. 2022a, "DPM-Solver"; 2022b, "DPM-Solver++")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids, multistep

ALGORITHMS = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


class DPMTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    alpha: jax.Array  # VP alpha, sigma of the step's start s0 (to convert the output)
    sigma: jax.Array
    r0: jax.Array  # h_{i-1} / h_i and h_{i-2} / h_i: the previous steps' lengths in lambda
    r1: jax.Array
    k3: jax.Array  # r0 / (r0 + r1) at third-order steps, else 0
    c_x: jax.Array  # x_t = c_x x_s0 + c0 D0 + c1 D1 + c2 D2 + c_z z
    c0: jax.Array
    c1: jax.Array
    c2: jax.Array
    c_z: jax.Array


class DPMState(NamedTuple):
    x: jax.Array
    hist: jax.Array  # [3, ...] converted outputs m_i, m_{i-1}, m_{i-2}


def _coefficients(algo: str, heun: bool, order: int, alpha_t, sigma_t, alpha_s, sigma_s, h):
    """(c_x, c0, c1, c2, c_z) of one step of length h in lambda = log(alpha / sigma).

    DPM-Solver++ (Lu et al. 2022b, eq. 9 and Alg. 2), data prediction D0 = x_theta:
      x_t = sigma_t/sigma_s x_s - alpha_t (e^-h - 1) D0 - 1/2 alpha_t (e^-h - 1) D1   (2M).
    DPM-Solver (Lu et al. 2022a, eq. 3.7), noise prediction D0 = eps_theta:
      x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) D0 - 1/2 sigma_t (e^h - 1) D1.
    SDE-DPM-Solver++ (2022b, eq. 18): x_t = sigma_t/sigma_s e^-h x_s + alpha_t (1 - e^-2h)
      (D0 + 1/2 D1) + sigma_t sqrt(1 - e^-2h) z.
    The "heun" solver type and the third order replace 1/2 phi by the phi_2 terms of
    Lu et al. 2022a, eq. 3.8 / 2022b, Alg. 2 (e.g. alpha_t ((e^-h - 1)/h + 1) for ++) and add
    the D2 term (e.g. -alpha_t ((e^-h - 1 + h)/h^2 - 1/2) D2).
    """
    h = float(h)
    if algo == "dpmsolver++":
        c_x, phi, c_z = sigma_t / sigma_s, -alpha_t * math.expm1(-h), 0.0
    elif algo == "dpmsolver":
        c_x, phi, c_z = alpha_t / alpha_s, -sigma_t * math.expm1(h), 0.0
    else:  # sde-dpmsolver++
        e2 = -math.expm1(-2.0 * h)  # 1 - e^-2h
        c_x, phi, c_z = sigma_t / sigma_s * math.exp(-h), alpha_t * e2, sigma_t * math.sqrt(e2)
    if order == 1:  # DDIM: x_t = c_x x_s + phi D0
        return c_x, phi, 0.0, 0.0, c_z
    if order == 2 and not heun:  # midpoint
        return c_x, phi, 0.5 * phi, 0.0, c_z
    if algo == "dpmsolver++":
        em = math.expm1(-h)
        c1, c2 = alpha_t * (em / h + 1.0), -alpha_t * ((em + h) / h**2 - 0.5)
    elif algo == "dpmsolver":
        ep = math.expm1(h)
        c1, c2 = -sigma_t * (ep / h - 1.0), -sigma_t * ((ep - h) / h**2 - 0.5)
    else:
        c1, c2 = (
            alpha_t * (e2 / (-2.0 * h) + 1.0),
            alpha_t * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5),
        )
    return c_x, phi, c1, (c2 if order == 3 else 0.0), c_z


def dpm_solver(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    solver_order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    lambda_min_clipped: float = -math.inf,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    use_lu_lambdas: bool = False,
    final_sigmas_type: str = "zero",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    timesteps: Sequence[int] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """Multistep DPM-Solver (Lu et al. 2022a, 2022b, Algorithm 2): exponential-integrator
    steps in lambda using the last ``solver_order`` (1-3) converted outputs, as data
    prediction ("dpmsolver++"), noise prediction ("dpmsolver") or the stochastic
    "sde-dpmsolver++". Reproduces diffusers' ``DPMSolverMultistepScheduler`` (grid, warm-up,
    ``lower_order_final``, ``final_sigmas_type``, Karras / Lu-lambda grids,
    ``lambda_min_clipped``, thresholding, custom ``timesteps``, ``set_begin_index`` as
    ``start_step``: the warm-up restarts there).
    """
    ac = core.alphas_cumprod(schedule, "dpm_solver")
    core.check_prediction_type(prediction_type, "dpm_solver")
    core.check_one_of(algorithm_type, ALGORITHMS, "algorithm_type")
    core.check_one_of(solver_type, SOLVER_TYPES, "solver_type")
    core.check_order(solver_order)
    if not algorithm_type.endswith("++") and final_sigmas_type == "zero":
        raise ValueError(
            f"final_sigmas_type='zero' needs a data-prediction solver (dpmsolver++ or "
            f"sde-dpmsolver++); with algorithm_type={algorithm_type!r} use "
            "final_sigmas_type='sigma_min'."
        )
    grid = grids.solver_grid(
        ac, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
        use_karras_sigmas=use_karras_sigmas, use_lu_lambdas=use_lu_lambdas,
        final_sigmas_type=final_sigmas_type, timesteps=timesteps,
        lambda_min_clipped=lambda_min_clipped,
        karras_t="trunc" if schedule.name in ("squaredcos_cap_v2", "cosine") else "round",
    )  # fmt: skip
    start = core.check_start(start_step, num_steps)
    alpha, sigma, lam = multistep.alpha_sigma_lambda(grid.sigmas)
    rows = []
    for i in range(start, num_steps):
        order = multistep.dpm_order(
            i, start, num_steps, solver_order, lower_order_final,
            final=euler_at_final or final_sigmas_type == "zero",
        )  # fmt: skip
        h = lam[i + 1] - lam[i]
        if h == 0.0:  # a zero-length step (sigma_min to a final sigma_min): x stays
            rows.append((1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0))
            continue
        r0 = (lam[i] - lam[i - 1]) / h if order >= 2 else 1.0
        r1 = (lam[i - 1] - lam[i - 2]) / h if order == 3 else 1.0
        c = _coefficients(
            algorithm_type, solver_type == "heun", order,
            alpha[i + 1], sigma[i + 1], alpha[i], sigma[i], h,
        )  # fmt: skip
        rows.append((r0, r1, r0 / (r0 + r1) if order == 3 else 0.0, *c))
    r0, r1, k3, c_x, c0, c1, c2, c_z = (core.f32(col) for col in zip(*rows, strict=True))
    tab = DPMTables(
        t=core.f32(grid.timesteps[start:]), alpha=core.f32(alpha[start:-1]),
        sigma=core.f32(sigma[start:-1]), r0=r0, r1=r1, k3=k3, c_x=c_x, c0=c0, c1=c1, c2=c2,
        c_z=c_z,
    )  # fmt: skip
    process_x0 = core.x0_processor(
        thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
        sample_max_value=sample_max_value,
    )  # fmt: skip

    def convert(output, x, s):
        """x_theta (data prediction, thresholded) or eps_theta, as the algorithm needs."""
        x0, eps = diffusion.to_x0_eps(output, x, s.alpha, s.sigma, prediction_type)
        if algorithm_type.endswith("++"):
            return process_x0(x0)
        if thresholding:
            return diffusion.eps_from_x0(x, process_x0(x0), s.alpha, s.sigma)
        return eps

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        output, _ = core.split_learned_variance(output, x)
        hist = jnp.concatenate([convert(output, x, s)[None], state.hist[:-1]])
        m0, m1, m2 = hist
        d1_0, d1_1 = (m0 - m1) / s.r0, (m1 - m2) / s.r1
        D0 = m0
        D1 = d1_0 + s.k3 * (d1_0 - d1_1)  # (m0 - m1) / r0, extrapolated at third order
        D2 = (d1_0 - d1_1) / (s.r0 + s.r1)
        x_t = s.c_x * x + s.c0 * D0 + s.c1 * D1 + s.c2 * D2
        if z is not None:
            x_t = x_t + s.c_z * z
        return DPMState(x=x_t, hist=hist)

    return core.Sampler(
        name="dpm_solver",
        timesteps=grid.timesteps[start:].astype(np.float64),
        stochastic=algorithm_type.startswith("sde"),
        init=lambda noise: DPMState(
            x=jnp.asarray(noise, jnp.float32), hist=jnp.zeros((3, *noise.shape), jnp.float32)
        ),
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=np.stack([alpha[start:-1], sigma[start:-1]], axis=-1),
        sigmas=grid.sigmas,
    )
