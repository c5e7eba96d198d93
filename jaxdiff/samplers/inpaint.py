"""Inpainting by replacement for any sampler: keep a known image where a mask says so.

After every call the state's known region is overwritten by the known image noised to the
state's new noise level, x = m (alpha x_known + sigma n) + (1 - m) x (Song et al. 2021,
"Score-based generative modeling", App. I.2, with a fixed noise n as diffusers' latent
inpainting blends ``add_noise(image, noise, t_next)``); after the last call, by the image
itself. For the resampling variant, which harmonises the two regions much better, see the
"repaint" sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import core


def replace_known(
    sampler: core.Sampler, *, image: jax.Array, mask: jax.Array, noise: jax.Array
) -> core.Sampler:
    """``sampler`` with the known region replaced after each update.

    Args:
      sampler: any prepared sampler (its ``levels`` give the noise level of each call).
      image: the known clean image x_0 [B, ...] (variance-preserving data scale).
      mask: 1 where ``image`` is kept, 0 where the sampler generates; broadcastable.
      noise: the standard-normal noise that noises the known image, [B, ...] (the starting
        noise of the run, as diffusers' inpainting pipelines use).
    """
    after = np.concatenate([sampler.levels[1:], [[1.0, 0.0]]])  # level of the state after k
    alpha, sigma = core.f32(after[:, 0]), core.f32(after[:, 1])
    image = jnp.asarray(image, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    noise = jnp.asarray(noise, jnp.float32)

    def update(state, k, output, z):
        state = sampler.update(state, k, output, z)
        known = alpha[k] * image + sigma[k] * noise
        if sampler.ve_state:  # the state is x_vp / alpha
            known = known / alpha[k]
        return state._replace(x=mask * known + (1.0 - mask) * state.x)

    return sampler._replace(update=update)
