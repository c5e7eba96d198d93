"""UniPC: unified predictor-corrector multistep sampling (Zhao et al. 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids, multistep

SOLVER_TYPES = ("bh1", "bh2")


class UniCoefs(NamedTuple):
    """One UniP / UniC step: x_t = c_x x_s + c_m m_s + c_b (sum_n rho_n D1_n + rho_t D1_t),
    D1_n = (m_n - m_s) / r_n over up to two older outputs m_n, D1_t = m_t - m_s (UniC)."""

    c_x: jax.Array  # [K]
    c_m: jax.Array  # -alpha_t (e^-h - 1) for data prediction, as DDIM / DPM-Solver++(1)
    c_b: jax.Array  # -alpha_t B(h)
    r: jax.Array  # [K, 2] r_n = (lambda_n - lambda_s) / h
    rho: jax.Array  # [K, 2]
    rho_t: jax.Array  # [K]


class UniPCTables(NamedTuple):
    t: jax.Array  # [N] model timestep
    alpha: jax.Array  # VP alpha, sigma at t_i (to convert the output)
    sigma: jax.Array
    correct: jax.Array  # 1.0 where UniC corrects x_i with the new output
    corrector: UniCoefs  # the step t_{i-1} -> t_i, redone with m_i
    predictor: UniCoefs  # the step t_i -> t_{i+1}


class UniPCState(NamedTuple):
    x: jax.Array
    last: jax.Array  # x_{i-1}, where the step that UniC redoes starts
    hist: jax.Array  # [4, ...] converted outputs m_i, m_{i-1}, m_{i-2}, m_{i-3}


def _rhos(rs: list[float], hh: float, b_h: float, order: int, corrector: bool) -> np.ndarray:
    """The UniPC weights rho (Zhao et al. 2023, Alg. 2-3): solve R rho = b with R the
    Vandermonde rows r^(k-1) (r over the older points and 1 for m_t) and b_k = h phi_k(h) k!
    / B(h) (phi_k from phi_1 = e^h - 1 by phi_{k+1} = phi_k / h - 1 / (k + 1)!)."""
    rs = rs + [1.0]
    h_phi_k, fact, r_mat, b = math.expm1(hh) / hh - 1.0, 1, [], []
    for k in range(1, order + 1):
        r_mat.append([r ** (k - 1) for r in rs])
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r_mat, b = np.array(r_mat), np.array(b)
    if corrector:
        return np.array([0.5]) if order == 1 else np.linalg.solve(r_mat, b)
    if order == 1:
        return np.zeros(0)
    if order == 2:  # UniP-2 uses rho = 1/2 (the B(h) = e^h - 1 choice of Alg. 2)
        return np.array([0.5])
    return np.linalg.solve(r_mat[:-1, :-1], b[:-1])


def _coefs(alpha, sigma, lam, t: int, s: int, older: list[int], order: int, x0: bool, bh: str,
           corrector: bool) -> tuple:  # fmt: skip
    """Coefficients of one step from lambda[s] to lambda[t] (see :class:`UniCoefs`)."""
    c_x = sigma[t] / sigma[s] if x0 else alpha[t] / alpha[s]
    h = lam[t] - lam[s]
    if h == 0.0:  # a zero-length step (sigma_min to a final sigma_min): x stays
        return c_x, 0.0, 0.0, [1.0, 1.0], [0.0, 0.0], 0.0
    hh = -h if x0 else h  # data prediction integrates in -lambda
    b_h = hh if bh == "bh1" else math.expm1(hh)  # B(h) = h or e^h - 1
    rs = [(lam[n] - lam[s]) / h for n in older]
    rho = list(_rhos(rs, hh, b_h, order, corrector))
    rho_t = rho.pop() if corrector else 0.0
    scale = alpha[t] if x0 else sigma[t]
    pad = 2 - len(rs)
    return c_x, -scale * math.expm1(hh), -scale * b_h, rs + [1.0] * pad, rho + [0.0] * pad, rho_t


def _uni_step(c: UniCoefs, x_s, m_s, older, m_t=None):
    res = sum(c.rho[n] * (older[n] - m_s) / c.r[n] for n in range(2))
    if m_t is not None:
        res = res + c.rho_t * (m_t - m_s)
    return c.c_x * x_s + c.c_m * m_s + c.c_b * res


def unipc(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    solver_order: int = 2,
    solver_type: str = "bh2",
    predict_x0: bool = True,
    lower_order_final: bool = True,
    disable_corrector: Sequence[int] = (),
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
    final_sigmas_type: str = "zero",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    timesteps: Sequence[int] | None = None,
    start_step: int = 0,
) -> core.Sampler:
    """UniPC (Zhao et al. 2023): the multistep predictor UniP-p (Algorithm 2) with the
    corrector UniC (Algorithm 3), B(h) = h ("bh1") or e^h - 1 ("bh2"), in data prediction
    (``predict_x0=True``) or noise prediction. The corrector reuses the next step's model
    call, so each step costs one evaluation; ``disable_corrector`` lists steps to skip it.
    Reproduces diffusers' ``UniPCMultistepScheduler`` (and its ``set_begin_index`` as
    ``start_step``). Deliberate difference: a final step to sigma = 0 always uses order 1
    (x_0 = the last data prediction); diffusers returns NaN there for "bh1" and fails for
    ``lower_order_final=False``.
    """
    ac = core.alphas_cumprod(schedule, "unipc")
    core.check_prediction_type(prediction_type, "unipc")
    core.check_one_of(solver_type, SOLVER_TYPES, "solver_type")
    core.check_order(solver_order)
    grid = grids.solver_grid(
        ac, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
        use_karras_sigmas=use_karras_sigmas, final_sigmas_type=final_sigmas_type,
        timesteps=timesteps,
    )  # fmt: skip
    start = core.check_start(start_step, num_steps)
    alpha, sigma, lam = multistep.alpha_sigma_lambda(grid.sigmas)
    off = (1.0, 0.0, 0.0, [1.0, 1.0], [0.0, 0.0], 0.0)
    correct, corr, pred, prev_order = [], [], [], 0
    for i in range(start, num_steps):
        use_corrector = i > start and (i - 1) not in set(disable_corrector)
        older = [i - 1 - n for n in range(1, prev_order)]
        corr.append(
            _coefs(alpha, sigma, lam, i, i - 1, older, prev_order, predict_x0, solver_type, True)
            if use_corrector else off
        )  # fmt: skip
        correct.append(float(use_corrector))
        order = min(solver_order, num_steps - i) if lower_order_final else solver_order
        order = min(order, min(i - start, solver_order) + 1)  # warm-up
        order = 1 if grid.sigmas[i + 1] == 0.0 else order
        older = [i - n for n in range(1, order)]
        pred.append(
            _coefs(alpha, sigma, lam, i + 1, i, older, order, predict_x0, solver_type, False)
        )
        prev_order = order
    tab = UniPCTables(
        t=core.f32(grid.timesteps[start:]), alpha=core.f32(alpha[start:-1]),
        sigma=core.f32(sigma[start:-1]), correct=core.f32(correct),
        corrector=UniCoefs(*(core.f32(col) for col in zip(*corr, strict=True))),
        predictor=UniCoefs(*(core.f32(col) for col in zip(*pred, strict=True))),
    )  # fmt: skip
    process_x0 = core.x0_processor(
        thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
        sample_max_value=sample_max_value,
    )  # fmt: skip

    def update(state, k, output, z):
        s = core.at(tab, k)
        x0, eps = diffusion.to_x0_eps(output, state.x, s.alpha, s.sigma, prediction_type)
        m = process_x0(x0) if predict_x0 else eps
        hist = jnp.concatenate([m[None], state.hist[:-1]])  # m_i, m_{i-1}, ...
        # UniC: redo the step t_{i-1} -> t_i from x_{i-1} with the new output m_i.
        x_c = _uni_step(s.corrector, state.last, hist[1], hist[2:4], m_t=hist[0])
        x = jnp.where(s.correct > 0, x_c, state.x)
        # UniP: predict x_{i+1} from the (corrected) x_i.
        x_next = _uni_step(s.predictor, x, hist[0], hist[1:3])
        return UniPCState(x=x_next, last=x, hist=hist)

    def init(noise):
        x = jnp.asarray(noise, jnp.float32)
        return UniPCState(x=x, last=jnp.zeros_like(x), hist=jnp.zeros((4, *x.shape), x.dtype))

    return core.Sampler(
        name="unipc",
        timesteps=grid.timesteps[start:].astype(np.float64),
        stochastic=False,
        init=init,
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=np.stack([alpha[start:-1], sigma[start:-1]], axis=-1),
        sigmas=grid.sigmas,
    )
