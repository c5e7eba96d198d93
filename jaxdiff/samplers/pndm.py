"""Pseudo numerical methods for diffusion models (PNDM / PLMS), Liu et al. 2022."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids

# Linear multistep weights of the newest 1-4 stored outputs (Liu et al. 2022, eq. 12; the
# Adams-Bashforth coefficients), newest first.
PLMS_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class PNDMTables(NamedTuple):
    t: jax.Array  # [K] model timestep
    w_out: jax.Array  # weight of this call's output in the combined eps'
    w_hist: jax.Array  # [K, 4] weights of the stored outputs (newest first)
    w_rk: jax.Array  # weight of the Runge-Kutta sum (last call of a PRK step)
    rk_weight: jax.Array  # this output's weight in the RK sum (1/6, 1/3, 1/3) ...
    rk_keep: jax.Array  # ... and whether the sum carries over (0 at a step's first call)
    store: jax.Array  # 1.0 if this output is pushed on the history
    from_start: jax.Array  # 1.0 if the transfer starts from the step's start x_t
    set_start: jax.Array  # 1.0 if x becomes the start of a new step
    alpha: jax.Array  # sqrt(ac) at the transfer's t (for v / x_0 models)
    sigma: jax.Array
    c_x: jax.Array  # transfer phi(x_t, eps', t, s) of eq. 9: c_x x_t - c_eps eps'
    c_eps: jax.Array


class PNDMState(NamedTuple):
    x: jax.Array
    start: jax.Array  # x_t at the start of the current step
    rk_sum: jax.Array  # running Runge-Kutta combination of the warm-up
    hist: jax.Array  # [4, ...] stored outputs, newest first


def _plan(prk: np.ndarray, plms: np.ndarray, ratio: int) -> list[dict]:
    """Per-call weights, replaying diffusers' ``PNDMScheduler`` bookkeeping (its counter and
    its list of stored outputs) symbolically."""
    rows, stored, counter = [], 0, 0
    for t in prk:  # pseudo 4th-order Runge-Kutta (Alg. 1): 4 calls per step
        stage = counter % 4
        half = 0 if counter % 2 else ratio // 2
        r = dict(t=t, t_eff=prk[counter // 4 * 4], prev=t - half)
        if stage == 0:  # k1: stored, starts the RK sum and the step
            r.update(w_out=1.0, rk_weight=1 / 6, rk_keep=0.0, store=1.0, set_start=1.0)
            stored += 1
        elif stage in (1, 2):  # k2, k3 from the step's start
            r.update(w_out=1.0, rk_weight=1 / 3, from_start=1.0)
        else:  # k4: eps' = (k1 + 2 k2 + 2 k3 + k4) / 6
            r.update(w_out=1 / 6, w_rk=1.0, rk_keep=0.0, from_start=1.0)
        rows.append(r)
        counter += 1
    for t in plms:  # linear multistep (eq. 12)
        r = dict(t=t, t_eff=t, prev=t - ratio, store=1.0)
        if counter == 1:  # the second call of skip-prk re-evaluates the first step (Heun)
            r.update(t_eff=t + ratio, prev=t, store=0.0)
        else:
            stored = min(stored, 3) + 1
        if stored == 1 and counter == 0:
            r.update(w_out=1.0, set_start=1.0)
        elif stored == 1 and counter == 1:
            r.update(w_out=0.5, w_hist=[0.5, 0.0, 0.0, 0.0], from_start=1.0)
        else:
            r["w_hist"] = list(PLMS_WEIGHTS[stored]) + [0.0] * (4 - stored)
        rows.append(r)
        counter += 1
    return rows


def pndm(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    skip_prk_steps: bool = False,
    set_alpha_to_one: bool = False,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    start_step: int = 0,
) -> core.Sampler:
    """PNDM of Liu et al. (2022): a pseudo Runge-Kutta warm-up (Algorithm 1, 12 calls)
    followed by the pseudo linear multistep method PLMS (eq. 12), both on the DDIM transfer
    phi (eq. 9). ``skip_prk_steps=True`` replaces the warm-up by one 2nd-order step (the
    variant Stable Diffusion uses). Reproduces diffusers' ``PNDMScheduler`` call by call,
    including its warm-up bookkeeping; "v_prediction" / "sample" outputs are turned into
    epsilon after the multistep combination, as diffusers does.

    ``start_step=k`` skips the first k calls of the PLMS grid (diffusers' img2img slicing of
    ``timesteps``; the multistep history restarts there); it needs ``skip_prk_steps=True``.
    """
    ac = core.alphas_cumprod(schedule, "pndm")
    core.check_prediction_type(prediction_type, "pndm")
    if not skip_prk_steps and num_steps < 4:
        raise ValueError("pndm with skip_prk_steps=False needs num_steps >= 4.")
    if start_step and not skip_prk_steps:
        raise ValueError(
            "pndm's Runge-Kutta warm-up cannot start part-way: use skip_prk_steps=True with "
            "start_step > 0."
        )
    prk, plms = grids.pndm_timesteps(
        len(ac), num_steps, timestep_spacing, steps_offset=steps_offset, skip_prk=skip_prk_steps
    )
    plms = plms[core.check_start(start_step, len(plms)) :]
    rows = _plan(prk, plms, len(ac) // num_steps)
    if zero := sorted({int(r["t_eff"]) for r in rows if ac[r["t_eff"]] == 0}):
        raise ValueError(
            f"pndm divides by sqrt(alphas_cumprod[t]), which is 0 at timestep(s) {zero} of "
            "this grid (a zero-terminal-SNR schedule); use timestep_spacing='leading', or a "
            "sampler that handles zero SNR (ddim, dpm_solver, unipc, euler)."
        )
    tab = _tables(rows, ac, np.float32(1.0) if set_alpha_to_one else ac[0])

    def update(state, k, output, z):
        s = core.at(tab, k)
        pushed = jnp.concatenate([output[None], state.hist[:-1]])
        hist = jnp.where(s.store > 0, pushed, state.hist)
        eps = s.w_out * output + s.w_rk * state.rk_sum + jnp.tensordot(s.w_hist, hist, 1)
        rk_sum = s.rk_keep * state.rk_sum + s.rk_weight * output
        x = jnp.where(s.from_start > 0, state.start, state.x)
        if prediction_type != "epsilon":  # the combination is eps-like only for eps models
            eps = diffusion.convert(
                eps, x, s.alpha, s.sigma, source=prediction_type, target="epsilon"
            )
        x_prev = s.c_x * x - s.c_eps * eps  # phi(x_t, eps', t, t - delta), eq. 9
        start = jnp.where(s.set_start > 0, state.x, state.start)
        return PNDMState(x=x_prev, start=start, rk_sum=rk_sum, hist=hist)

    def init(noise):
        x = jnp.asarray(noise, jnp.float32)
        zeros = jnp.zeros_like(x)
        return PNDMState(x=x, start=zeros, rk_sum=zeros, hist=jnp.stack([zeros] * 4))

    return core.Sampler(
        name="pndm",
        timesteps=np.concatenate([prk, plms]).astype(np.float64),
        stochastic=False,
        init=init,
        model_input=core.vp_input(tab.t),
        update=update,
        tables=tab,
        levels=core.vp_of_alphas_cumprod(ac[[int(r["t"]) for r in rows]]),
    )


def _tables(rows: list[dict], ac: np.ndarray, final: np.float32) -> PNDMTables:
    defaults = dict(w_out=0.0, w_hist=[0.0] * 4, w_rk=0.0, rk_weight=0.0, rk_keep=1.0)
    defaults.update(store=0.0, from_start=0.0, set_start=0.0)
    cols = {k: [r.get(k, v) for r in rows] for k, v in defaults.items()}
    t_eff = np.array([r["t_eff"] for r in rows])
    prev = np.array([r["prev"] for r in rows])
    ac_t = ac[t_eff]
    ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    one, half = np.float32(1.0), np.float32(0.5)
    beta_t, beta_prev = one - ac_t, one - ac_prev
    # eq. 9 in diffusers' operation order:
    # x_s = sqrt(ac_s / ac_t) x_t - (ac_s - ac_t) eps / (ac_t sqrt(1 - ac_s) + sqrt(ac_t (1 -
    # ac_t) ac_s)).
    denom = ac_t * beta_prev**half + (ac_t * beta_t * ac_prev) ** half
    return PNDMTables(
        t=core.f32([r["t"] for r in rows]),
        **{k: core.f32(v) for k, v in cols.items()},
        alpha=core.f32(np.sqrt(ac_t)),
        sigma=core.f32(np.sqrt(beta_t)),
        c_x=core.f32((ac_prev / ac_t) ** half),
        c_eps=core.f32((ac_prev - ac_t) / denom),
    )
