"""Pseudo numerical methods for diffusion models (PNDM / PLMS), Liu et al. 2022."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.samplers import base
from jaxdiff.samplers.base import Plan, Sampler, f32

# PLMS weights of the last 1..4 stored outputs (newest first), Liu et al. 2022, eq. 12.
_PLMS = {2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _pndm_grid(n_train: int, num_steps: int, opts) -> tuple[np.ndarray, np.ndarray]:
    """(prk_timesteps, plms_timesteps) as diffusers' PNDMScheduler.set_timesteps builds them."""
    spacing = opts["timestep_spacing"]
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, num_steps).round().astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, num_steps) * (n_train // num_steps)).round() + opts["steps_offset"]
    else:
        ratio = n_train / num_steps
        ts = np.round(np.arange(n_train, 0, -ratio))[:num_steps][::-1].astype(np.int64) - 1
    schedules.check_timesteps_in_range(ts, n_train, opts["steps_offset"])
    if opts["skip_prk_steps"]:
        prk = np.array([], np.int64)
        plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
    else:
        half = n_train // num_steps // 2
        prk = np.array(ts[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
        prk = prk[:-1].repeat(2)[1:-1][::-1]
        plms = ts[:-3][::-1]
    return prk.astype(np.int64), plms.astype(np.int64)


class PNDM(Sampler):
    """PNDM of Liu et al. (2022): Runge-Kutta warm-up (PRK, Algorithm 1 with the pseudo
    4th-order method) followed by the linear multistep method PLMS (eq. 12) on the DDIM
    transfer function (eq. 9). ``skip_prk_steps=True`` replaces the 12-call warm-up by one
    2nd-order step (the variant Stable Diffusion uses). Reproduces diffusers'
    ``PNDMScheduler`` (call by call, including its warm-up bookkeeping).

    Supports "epsilon" and "v_prediction" (converted to epsilon after the multistep
    combination, as diffusers does) and "sample" (converted the same way).
    """

    name = "pndm"
    options = {
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }

    def check(self, opts, schedule, num_steps):
        schedules.check_spacing(opts["timestep_spacing"])
        if not opts["skip_prk_steps"] and num_steps < 4:
            raise ValueError("pndm with skip_prk_steps=False needs num_steps >= 4.")

    def plan(self, schedule, num_steps, opts):
        ac = base.host_alphas_cumprod(schedule)
        n_train = len(ac)
        prk, plms = _pndm_grid(n_train, num_steps, opts)
        final = np.float32(1.0) if opts["set_alpha_to_one"] else ac[0]
        ratio = n_train // num_steps
        rows, n_ets, counter = [], 0, 0
        # Simulate diffusers' bookkeeping symbolically: each call k gets weights for
        # output = a_out * out + a_acc * acc + sum_j a_ets[j] * ets[-1 - j] (after a push).
        for t in prk:
            c = counter % 4
            diff = 0 if counter % 2 else ratio // 2
            t_eff = prk[counter // 4 * 4]
            r = _row(t, t_eff, t - diff)
            if c == 0:
                r.update(a_out=1.0, acc_keep=0.0, acc_w=1 / 6, push=1.0, set_cur=1.0)
                n_ets += 1
            elif c in (1, 2):
                r.update(a_out=1.0, acc_w=1 / 3, use_cur=1.0)
            else:
                r.update(a_out=1 / 6, a_acc=1.0, acc_keep=0.0, use_cur=1.0)
            rows.append(r)
            counter += 1
        for t in plms:
            prev, t_eff = t - ratio, t
            push = counter != 1
            if not push:
                prev, t_eff = t, t + ratio
            r = _row(t, t_eff, prev)
            if push:
                n_ets = min(n_ets, 3) + 1
                r["push"] = 1.0
            if n_ets == 1 and counter == 0:
                r.update(a_out=1.0, set_cur=1.0)
            elif n_ets == 1 and counter == 1:
                r.update(a_out=0.5, use_cur=1.0)
                r["a_ets"] = [0.5, 0.0, 0.0, 0.0]
            else:
                w = _PLMS[n_ets]
                r["a_ets"] = list(w) + [0.0] * (4 - len(w))
            rows.append(r)
            counter += 1
        zero = sorted({r["t_eff"] for r in rows if ac[r["t_eff"]] == 0})
        if zero:
            raise ValueError(
                f"pndm divides by sqrt(alphas_cumprod[t]), which is 0 at timestep(s) {zero} of "
                "this grid (a zero-terminal-SNR schedule); use timestep_spacing='leading', or a "
                "sampler that handles zero SNR (ddim, dpm_solver, unipc, euler)."
            )
        tables = _tables(rows, ac, final)
        return Plan(tables, np.concatenate([prk, plms]).astype(np.float64), 1.0)

    def init_state(self, x, opts):
        zeros = x * 0.0
        return {"x": x, "cur": zeros, "acc": zeros, "ets": jnp.stack([zeros] * 4)}

    def update(self, state, output, row, noise, opts, prediction_type):
        x, ets, acc = state["x"], state["ets"], state["acc"]
        pushed = jnp.concatenate([output[None], ets[:-1]])  # newest first
        ets = row["push"] * pushed + (1.0 - row["push"]) * ets
        combined = row["a_out"] * output + row["a_acc"] * acc
        for j in range(4):
            combined = combined + row["a_ets"][j] * ets[j]
        acc = row["acc_keep"] * acc + row["acc_w"] * output
        sample = row["use_cur"] * state["cur"] + (1.0 - row["use_cur"]) * x
        alpha, sigma = row["sqrt_ac"], row["sqrt_one_minus_ac"]
        if prediction_type == "v_prediction":
            combined = alpha * combined + sigma * sample
        elif prediction_type == "sample":
            combined = (sample - alpha * combined) / sigma
        x_prev = row["c_sample"] * sample - row["c_num"] * combined / row["c_den"]
        cur = row["set_cur"] * x + (1.0 - row["set_cur"]) * state["cur"]
        return {"x": x_prev, "cur": cur, "acc": acc, "ets": ets}


def _row(t: int, t_eff: int, prev: int) -> dict:
    return {
        "t": float(t),
        "t_eff": int(t_eff),
        "prev": int(prev),
        "a_out": 0.0,
        "a_acc": 0.0,
        "a_ets": [0.0] * 4,
        "acc_keep": 1.0,
        "acc_w": 0.0,
        "push": 0.0,
        "use_cur": 0.0,
        "set_cur": 0.0,
    }


def _tables(rows: list[dict], ac: np.ndarray, final: np.float32) -> dict[str, np.ndarray]:
    t_eff = np.array([r["t_eff"] for r in rows])
    prev = np.array([r["prev"] for r in rows])
    ac_t = ac[t_eff]
    ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    one = np.float32(1.0)
    beta_t, beta_prev = one - ac_t, one - ac_prev
    tables = {
        k: f32([r[k] for r in rows])
        for k in ("t", "a_out", "a_acc", "a_ets", "acc_keep", "acc_w", "push", "use_cur", "set_cur")
    }
    tables.update(
        sqrt_ac=np.sqrt(ac_t),
        sqrt_one_minus_ac=np.sqrt(beta_t),
        c_sample=f32((ac_prev / ac_t) ** np.float32(0.5)),
        c_num=f32(ac_prev - ac_t),
        c_den=f32(
            ac_t * beta_prev ** np.float32(0.5) + (ac_t * beta_t * ac_prev) ** np.float32(0.5)
        ),
    )
    return tables
