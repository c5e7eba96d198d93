"""DPM-Solver multistep (Lu et al. 2022a, 2022b): dpmsolver, dpmsolver++, sde-dpmsolver++."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import base, multistep
from jaxdiff.samplers.base import Plan, Sampler, f32

ALGORITHMS = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def _orders(num_steps: int, opts: dict) -> list[int]:
    """The order used at each step, with diffusers' warm-up and lower-order-final rules."""
    order, lof = opts["solver_order"], opts["lower_order_final"]
    out = []
    for i in range(num_steps):
        lower_nums = min(i, order)
        final = i == num_steps - 1 and (
            opts["euler_at_final"]
            or (lof and num_steps < 15)
            or opts["final_sigmas_type"] == "zero"
        )
        second = i == num_steps - 2 and lof and num_steps < 15
        if order == 1 or lower_nums < 1 or final:
            out.append(1)
        elif order == 2 or lower_nums < 2 or second:
            out.append(2)
        else:
            out.append(3)
    return out


def _step_coefs(lam, alpha, sigma, i: int, order: int, opts: dict) -> tuple[float, list, float]:
    """(c_x, [c_m0, c_m1, c_m2], c_noise) of one update x_t = c_x x + sum c_mj m_j + c_n z.

    m_0 is the newest converted model output (x_0 for ++ variants, eps otherwise); the
    formulas are Lu et al. 2022b, Algorithms 1-2 and their SDE versions, in diffusers' form.
    """
    algo, heun = opts["algorithm_type"], opts["solver_type"] == "heun"
    lt, ls0 = lam[i + 1], lam[i]
    a_t, s_t, a_s0, s_s0 = alpha[i + 1], sigma[i + 1], alpha[i], sigma[i]
    h = lt - ls0
    with np.errstate(over="ignore", invalid="ignore"):
        if algo == "dpmsolver++":
            c_x, phi, noise = s_t / s_s0, -a_t * np.expm1(-h), 0.0
            c1 = 0.5 * phi if not heun else a_t * (np.expm1(-h) / h + 1.0)
            c2 = -a_t * ((np.expm1(-h) + h) / h**2 - 0.5) if order == 3 else 0.0
        elif algo == "dpmsolver":
            c_x, phi, noise = a_t / a_s0, -s_t * np.expm1(h), 0.0
            c1 = -0.5 * s_t * np.expm1(h) if not heun else -s_t * (np.expm1(h) / h - 1.0)
            c2 = -s_t * ((np.expm1(h) - h) / h**2 - 0.5) if order == 3 else 0.0
        else:  # sde-dpmsolver++
            e2 = -np.expm1(-2.0 * h)  # 1 - exp(-2h)
            c_x, phi = (s_t / s_s0) * math.exp(-h) if np.isfinite(h) else 0.0, a_t * e2
            noise = s_t * math.sqrt(e2)
            c1 = 0.5 * phi if not heun else a_t * (e2 / (-2.0 * h) + 1.0)
            c2 = a_t * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5) if order == 3 else 0.0
    if order == 1:
        return c_x, [phi, 0.0, 0.0], noise
    if order == 3:
        # The third-order formula always uses the "heun"-type D1 coefficient.
        c1 = _third_order_c1(algo, a_t, s_t, h)
    r0 = (ls0 - lam[i - 1]) / h
    if order == 2:
        # D1 = (m0 - m1) / r0
        return c_x, [phi + c1 / r0, -c1 / r0, 0.0], noise
    r1 = (lam[i - 1] - lam[i - 2]) / h
    # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),
    # D2 = (D1_0 - D1_1) / (r0 + r1).
    k = r0 / (r0 + r1)
    d1_0 = np.array([1 / r0, -1 / r0, 0.0])
    d1_1 = np.array([0.0, 1 / r1, -1 / r1])
    d1 = d1_0 + k * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    coefs = np.array([phi, 0.0, 0.0]) + c1 * d1 + c2 * d2
    return c_x, list(coefs), noise


def _third_order_c1(algo: str, a_t, s_t, h) -> float:
    if algo == "dpmsolver++":
        return a_t * (np.expm1(-h) / h + 1.0)
    if algo == "dpmsolver":
        return -s_t * (np.expm1(h) / h - 1.0)
    return a_t * (-np.expm1(-2.0 * h) / (-2.0 * h) + 1.0)


class DPMSolver(Sampler):
    """Multistep DPM-Solver (Lu et al. 2022a, "DPM-Solver", and 2022b, "DPM-Solver++",
    Algorithm 2): exponential-integrator updates in lambda = log(alpha / sigma) using the
    last ``solver_order`` (1-3) model outputs, as data prediction ("dpmsolver++"), noise
    prediction ("dpmsolver"), or the stochastic "sde-dpmsolver++" (Lu et al. 2022b, eq. 18).
    ``solver_type`` "midpoint"/"heun" selects the 2nd-order formula. Reproduces diffusers'
    ``DPMSolverMultistepScheduler`` (grid, warm-up, ``lower_order_final``,
    ``final_sigmas_type``, ``use_karras_sigmas``, ``lambda_min_clipped``, thresholding).
    """

    name = "dpm_solver"
    options = {
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "lambda_min_clipped": -math.inf,
        **multistep.SIGMA_OPTIONS,
        **base.THRESHOLD_OPTIONS,
    }

    def check(self, opts, schedule, num_steps):
        multistep.check_sigma_options(opts)
        if opts["algorithm_type"] not in ALGORITHMS:
            raise ValueError(
                f"Unknown algorithm_type {opts['algorithm_type']!r}; allowed: "
                f"{', '.join(ALGORITHMS)}."
            )
        if opts["solver_type"] not in SOLVER_TYPES:
            raise ValueError(
                f"Unknown solver_type {opts['solver_type']!r}; allowed: {', '.join(SOLVER_TYPES)}."
            )
        if opts["solver_order"] not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3; got {opts['solver_order']!r}.")
        if not opts["algorithm_type"].endswith("++") and opts["final_sigmas_type"] == "zero":
            raise ValueError(
                f"final_sigmas_type='zero' needs a data-prediction solver (dpmsolver++ or "
                f"sde-dpmsolver++); with algorithm_type={opts['algorithm_type']!r} use "
                "final_sigmas_type='sigma_min'."
            )

    def is_stochastic(self, opts):
        return opts["algorithm_type"].startswith("sde")

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        n_train = len(ac)
        acf = ac.copy()
        if acf[-1] == 0.0:
            acf[-1] = np.float32(2.0**-24)
        lam_train = np.log(np.sqrt(acf)) - np.log(np.sqrt(np.float32(1.0) - acf))
        clipped = int(np.searchsorted(lam_train[::-1], opts["lambda_min_clipped"]))
        ts = multistep.lambda_grid_timesteps(
            n_train, num_steps, opts, last_timestep=n_train - clipped
        )
        # diffusers does not round Karras timesteps for the cosine schedule (they truncate).
        cosine = schedule.name in ("squaredcos_cap_v2", "cosine")
        karras_t = "trunc" if cosine else "round"
        ts, sigmas = multistep.sigma_grid(ac, ts, num_steps, opts, karras_t=karras_t)
        alpha, sigma, lam = multistep.alpha_sigma_lambda(sigmas)
        orders = _orders(num_steps, opts)
        rows = [_step_coefs(lam, alpha, sigma, i, o, opts) for i, o in enumerate(orders)]
        tables = {
            "t": f32(ts),
            "alpha": f32(alpha[:-1]),
            "sigma": f32(sigma[:-1]),
            "c_x": f32([r[0] for r in rows]),
            "c_m": f32([r[1] for r in rows]),
            "c_noise": f32([r[2] for r in rows]),
        }
        return Plan(tables, np.asarray(ts, np.float64), 1.0)

    def init_state(self, x, opts):
        return {"x": x, "hist": jnp.zeros((3, *x.shape), jnp.float32)}

    def update(self, state, output, row, noise, opts, prediction_type):
        x = state["x"]
        output, _ = base.split_learned_variance(output, x)
        alpha, sigma = row["alpha"], row["sigma"]
        x0, eps = base.x0_eps_from_output(output, x, alpha, sigma, prediction_type)
        if opts["algorithm_type"].endswith("++"):
            m = base.threshold_x0(x0, opts)
        elif opts["thresholding"]:
            x0 = base.threshold_x0((x - sigma * eps) / alpha, opts)
            m = (x - alpha * x0) / sigma
        else:
            m = eps
        hist = jnp.concatenate([m[None], state["hist"][:-1]])
        x_new = row["c_x"] * x
        for j in range(3):
            x_new = x_new + row["c_m"][j] * hist[j]
        if noise is not None:
            x_new = x_new + row["c_noise"] * noise
        return {"x": x_new, "hist": hist}
