"""RePaint: inpainting with an unconditional model by resampling (Lugmayr et al. 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids


class RePaintTables(NamedTuple):
    t: jax.Array  # [K] model timestep of call k
    renoise: jax.Array  # 1.0 if the state is noised back up before call k (a jump)
    c_keep: jax.Array  # q(x_b | x_a) = N(c_keep x_a, c_noise^2): the jump's Gaussian
    c_noise: jax.Array
    alpha: jax.Array  # sqrt(ac_t), sqrt(1 - ac_t)
    sigma: jax.Array
    alpha_prev: jax.Array  # sqrt(ac_s), s = t - T // N (1 below 0)
    var_prev: jax.Array  # 1 - ac_s
    std_unit: jax.Array  # DDIM's sigma_t(eta = 1)
    noise_on: jax.Array  # 1.0 where t > 0 (the last step adds no variance)


class RePaintState(NamedTuple):
    x: jax.Array


def jump_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's time sequence in grid steps (Lugmayr et al. 2022, Fig. 9; diffusers'
    ``RePaintScheduler.set_timesteps``): step down from N - 1; at every multiple of
    ``jump_length`` below N - jump_length go back up ``jump_length`` steps, ``jump_n_sample -
    1`` times. A decrease is a model call, an increase a re-noising step."""
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t, seq = num_steps, []
    while t >= 1:
        t -= 1
        seq.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                seq.append(t)
    return seq


@core.traceable("image", "mask", "eta")
def repaint(
    schedule,
    num_steps: int,
    *,
    prediction_type: str = "epsilon",
    image: jax.Array | None = None,
    mask: jax.Array | None = None,
    eta: float = 0.0,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
) -> core.Sampler:
    """RePaint (Lugmayr et al. 2022, Algorithm 1): DDIM steps with stochasticity ``eta`` (1 is
    the paper's DDPM ancestral step) on the unknown region, the known region replaced by the
    image noised to the same level, x_s = mask * (sqrt(ac_s) x_known + sqrt(1 - ac_s) z) +
    (1 - mask) * x_s^unknown, and resampling: every ``jump_length`` steps the state is
    noised back up ``jump_length`` steps by q(x_{t+j} | x_t) and denoised again,
    ``jump_n_sample - 1`` times, which harmonises the two regions. Reproduces diffusers'
    ``RePaintScheduler`` / ``RePaintPipeline`` (``mask`` 1 = keep the image there, 0 =
    inpaint; a jump's re-noising drawn at once, not one training step at a time). As there,
    the re-noising entry at grid time t applies the training betas t .. t + T // N - 1 (one
    grid step up from the state after the call at t).

    Args (besides the common ones):
      image: the known image x_0 [B, ...] (traced: new images never recompile).
      mask: 1 where ``image`` is kept, 0 where it is inpainted, broadcastable to the image.
      eta: DDIM's stochasticity of the denoising steps (traced).
      jump_length, jump_n_sample: the resampling schedule (j and r in the paper).
    """
    ac = core.alphas_cumprod(schedule, "repaint")
    core.check_prediction_type(prediction_type, "repaint")
    if image is None or mask is None:
        raise ValueError("repaint needs image= (the known image) and mask= (1 = keep).")
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            f"jump_length and jump_n_sample must be >= 1; got {jump_length}, {jump_n_sample}."
        )
    grids.check_num_steps(num_steps, len(ac))
    ratio = len(ac) // num_steps
    seq = [s * ratio for s in jump_schedule(num_steps, jump_length, jump_n_sample)]
    betas = np.asarray(schedule.betas, np.float64)
    rows, kept, t_last = [], 1.0, seq[0] + 1  # kept: prod (1 - beta) of the pending jump
    for t in seq:
        if t >= t_last:  # a re-noising entry: one grid step up, folded into the next call
            kept *= float(np.prod(1.0 - betas[t_last : t_last + ratio]))
        else:
            rows.append((t, float(kept < 1.0), np.sqrt(kept), np.sqrt(1.0 - kept)))
            kept = 1.0
        t_last = t
    ts = np.array([r[0] for r in rows])
    prev = ts - ratio
    ac_t = ac[ts]
    ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
    one = np.float32(1.0)
    tab = RePaintTables(
        t=core.f32(ts), renoise=core.f32([r[1] for r in rows]),
        c_keep=core.f32([r[2] for r in rows]), c_noise=core.f32([r[3] for r in rows]),
        alpha=core.f32(np.sqrt(ac_t)), sigma=core.f32(np.sqrt(one - ac_t)),
        alpha_prev=core.f32(np.sqrt(ac_prev)), var_prev=core.f32(one - ac_prev),
        std_unit=core.f32(np.sqrt((one - ac_prev) / (one - ac_t) * (one - ac_t / ac_prev))),
        noise_on=core.f32(ts > 0),
    )  # fmt: skip
    process_x0 = core.x0_processor(clip_sample=clip_sample, clip_sample_range=clip_sample_range)

    def model_input(state, k, z):
        s = core.at(tab, k)
        jumped = s.c_keep * state.x + s.c_noise * z[0]  # q(x_t | x_{t - j}), one draw
        x = jnp.where(s.renoise > 0, jumped, state.x)
        return RePaintState(x), x, s.t

    def update(state, k, output, z):
        s, x = core.at(tab, k), state.x
        x0, eps = diffusion.to_x0_eps(output, x, s.alpha, s.sigma, prediction_type)
        x0 = process_x0(x0)
        std = jnp.asarray(eta, jnp.float32) * s.std_unit
        unknown = s.alpha_prev * x0 + jnp.sqrt(s.var_prev - std**2) * eps  # DDIM eq. 12
        unknown = unknown + s.noise_on * std * z[1]
        known = s.alpha_prev * image + jnp.sqrt(s.var_prev) * z[1]  # q(x_s | x_0)
        return RePaintState(mask * known + (1.0 - mask) * unknown)

    return core.Sampler(
        name="repaint",
        timesteps=ts.astype(np.float64),
        stochastic=True,
        init=lambda noise: RePaintState(jnp.asarray(noise, jnp.float32)),
        model_input=model_input,
        update=update,
        tables=tab,
        levels=core.vp_of_alphas_cumprod(ac_t),
        noise_draws=2,
    )
