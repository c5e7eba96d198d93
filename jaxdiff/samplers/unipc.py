"""UniPC: unified predictor-corrector multistep sampling (Zhao et al. 2023)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import base, multistep
from jaxdiff.samplers.base import Plan, Sampler, f32

SOLVER_TYPES = ("bh1", "bh2")
_DEPTH = 4  # newest output plus up to three older ones (corrector of order 3)


def _rhos(lam, t_idx: int, s0_idx: int, older: list[int], order: int, opts, corrector: bool):
    """UniPC-B(h) weights (Zhao et al. 2023, Algorithms 2-3), in float64.

    Returns (h_phi_1, B_h, rks, rhos) for a step from lambda[s0_idx] to lambda[t_idx] using
    the older points ``older`` (indices into lambda, newest first).
    """
    h = lam[t_idx] - lam[s0_idx]
    rks = [(lam[si] - lam[s0_idx]) / h for si in older] + [1.0]
    hh = -h if opts["predict_x0"] else h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if opts["solver_type"] == "bh1" else math.expm1(hh)
    r_mat, b, fact = [], [], 1
    for i in range(1, order + 1):
        r_mat.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r_mat, b = np.array(r_mat), np.array(b)
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(r_mat, b)
    elif order == 1:
        rhos = np.zeros(0)
    elif order == 2:
        rhos = np.array([0.5])
    else:
        rhos = np.linalg.solve(r_mat[:-1, :-1], b[:-1])
    return h_phi_1, b_h, rks[:-1], rhos


def _update_coefs(alpha, sigma, lam, t_idx, s0_idx, older, order, opts, corrector):
    """(c_x, c_h [DEPTH]) of x_t = c_x x_s0 + sum_j c_h[j] H_j.

    H_0 is the newest converted output; for the predictor H_0 is the output at s0, for the
    corrector H_0 is the output at t and H_1 the one at s0.
    """
    x0 = opts["predict_x0"]
    c_x = sigma[t_idx] / sigma[s0_idx] if x0 else alpha[t_idx] / alpha[s0_idx]
    c_h = np.zeros(_DEPTH)
    if lam[t_idx] == lam[s0_idx]:  # a zero-length step (sigma_min to a final sigma_min)
        return c_x, c_h
    h_phi_1, b_h, rks, rhos = _rhos(lam, t_idx, s0_idx, older, order, opts, corrector)
    scale = alpha[t_idx] if x0 else sigma[t_idx]
    k = scale * b_h
    base_j = 1 if corrector else 0  # position of m(s0) in H
    c_h[base_j] = -scale * h_phi_1
    for n, rk in enumerate(rks):  # D1_n = (m_older_n - m_s0) / rk
        c_h[base_j + 1 + n] -= k * rhos[n] / rk
        c_h[base_j] += k * rhos[n] / rk
    if corrector:  # + rhos[-1] * (m_t - m_s0)
        c_h[0] -= k * rhos[-1]
        c_h[1] += k * rhos[-1]
    return c_x, c_h


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023): the multistep predictor UniP-p (Algorithm 2) with the
    corrector UniC (Algorithm 3), B(h) = h ("bh1") or expm1(h) ("bh2"), in data prediction
    (``predict_x0=True``) or noise prediction. The corrector reuses the next step's model
    call, so each step costs one evaluation; ``disable_corrector`` lists steps to skip it.
    Reproduces diffusers' ``UniPCMultistepScheduler``. Deliberate difference: a final step
    to sigma = 0 always uses order 1 (x_0 = the last data prediction); diffusers returns NaN
    there for "bh1" and fails for ``lower_order_final=False``.
    """

    name = "unipc"
    options = {
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "lower_order_final": True,
        "disable_corrector": (),
        **multistep.SIGMA_OPTIONS,
        **base.THRESHOLD_OPTIONS,
    }

    def check(self, opts, schedule, num_steps):
        multistep.check_sigma_options(opts)
        if opts["solver_type"] not in SOLVER_TYPES:
            raise ValueError(
                f"Unknown solver_type {opts['solver_type']!r}; allowed: {', '.join(SOLVER_TYPES)}."
            )
        if opts["solver_order"] not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3; got {opts['solver_order']!r}.")

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        ts = multistep.lambda_grid_timesteps(len(ac), num_steps, opts)
        ts, sigmas = multistep.sigma_grid(ac, ts, num_steps, opts)
        alpha, sigma, lam = multistep.alpha_sigma_lambda(sigmas)
        order, disabled = opts["solver_order"], set(opts["disable_corrector"])
        rows, prev_order = [], 0
        for i in range(num_steps):
            if i > 0 and (i - 1) not in disabled:
                older = [i - 1 - n for n in range(1, prev_order)]
                cx, ch = _update_coefs(alpha, sigma, lam, i, i - 1, older, prev_order, opts, True)
                corr = (0.0, cx, ch)
            else:
                corr = (1.0, 0.0, np.zeros(_DEPTH))
            this = min(order, num_steps - i) if opts["lower_order_final"] else order
            this = min(this, min(i, order) + 1)
            if sigmas[i + 1] == 0.0:
                this = 1
            older = [i - n for n in range(1, this)]
            px, ph = _update_coefs(alpha, sigma, lam, i + 1, i, older, this, opts, False)
            rows.append((*corr, px, ph))
            prev_order = this
        tables = {
            "t": f32(ts),
            "alpha": f32(alpha[:-1]),
            "sigma": f32(sigma[:-1]),
            "c_keep": f32([r[0] for r in rows]),
            "c_last": f32([r[1] for r in rows]),
            "c_corr": f32([r[2] for r in rows]),
            "c_x": f32([r[3] for r in rows]),
            "c_pred": f32([r[4] for r in rows]),
        }
        return Plan(tables, np.asarray(ts, np.float64), 1.0)

    def init_state(self, x, opts):
        return {"x": x, "last": x * 0.0, "hist": jnp.zeros((_DEPTH, *x.shape), jnp.float32)}

    def update(self, state, output, row, noise, opts, prediction_type):
        x = state["x"]
        alpha, sigma = row["alpha"], row["sigma"]
        x0, eps = base.x0_eps_from_output(output, x, alpha, sigma, prediction_type)
        m = base.threshold_x0(x0, opts) if opts["predict_x0"] else eps
        hist = jnp.concatenate([m[None], state["hist"][:-1]])
        x_corr = row["c_keep"] * x + row["c_last"] * state["last"]
        for j in range(_DEPTH):
            x_corr = x_corr + row["c_corr"][j] * hist[j]
        x_new = row["c_x"] * x_corr
        for j in range(_DEPTH):
            x_new = x_new + row["c_pred"][j] * hist[j]
        return {"x": x_new, "last": x_corr, "hist": hist}
