"""Cascaded super-resolution (Ho et al. 2021, "Cascaded Diffusion Models"; Imagen): a U-Net
that denoises the high-resolution x_t given a low-resolution image.

The low-resolution image is upsampled (nearest, by an integer factor) and concatenated to
x_t on the channel axis. With noise conditioning augmentation the low-resolution input is
itself noised, z = alpha_s x_low + sigma_s eps, at a level s drawn at random during training
(``augment_levels`` discrete levels of the same schedule, s = level * T / levels) and chosen
at sampling time; the model is told the level through its class embedding (level k is
"class" k), so it learns to trust a clean input and to repair a noisy one. This makes the
cascade robust to the base model's artifacts (Ho et al. 2021, Sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.models.unet import UNet


def upsample(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of [B, h, w, C] by an integer ``factor``."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


def downsample(x: jax.Array, factor: int) -> jax.Array:
    """Average-pool [B, H, W, C] by an integer ``factor`` (the low-resolution view)."""
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of the factor {factor}.")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def augment_timestep(level: jax.Array, augment_levels: int, num_train_timesteps: int):
    """The training timestep of augmentation level k in [0, augment_levels): k T / levels
    (level 0 is no augmentation)."""
    return jnp.asarray(level, jnp.float32) * (num_train_timesteps / augment_levels)


def augment_low_res(
    low_res: jax.Array, level: jax.Array, noise: jax.Array, *, schedule: Any, augment_levels: int
) -> jax.Array:
    """Noise conditioning augmentation: the low-resolution image at level k [B] (k = 0 keeps
    it clean)."""
    s = augment_timestep(level, augment_levels, schedule.num_train_timesteps)
    alpha = jnp.where(level > 0, schedule.alpha(s), 1.0)
    sigma = jnp.where(level > 0, schedule.sigma(s), 0.0)
    return diffusion.q_sample(low_res, noise, alpha, sigma)


class SuperResolutionUNet(nn.Module):
    """``apply(x_t, t, low_res=z, labels=level)``: the U-Net ``unet`` on concat(x_t,
    upsample(z)) with the augmentation level as its class (``unet.num_classes`` must be the
    number of augmentation levels; its output has x_t's channels).

    Attributes:
      unet: the denoiser (its in-channels are x_t's plus the low-resolution image's).
      factor: the upsampling factor (high / low resolution).
    """

    unet: UNet
    factor: int

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        low_res: jax.Array | None = None,
        labels: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Denoiser output for the high-resolution x [B, H, W, C]."""
        if low_res is None:
            raise ValueError("SuperResolutionUNet needs low_res= (the low-resolution image).")
        want = (x.shape[1] // self.factor, x.shape[2] // self.factor)
        if tuple(low_res.shape[1:3]) != want or x.shape[1] % self.factor:
            raise ValueError(
                f"low_res is {low_res.shape[1]}x{low_res.shape[2]}; for x of "
                f"{x.shape[1]}x{x.shape[2]} and factor {self.factor} it must be "
                f"{want[0]}x{want[1]}."
            )
        if not self.unet.num_classes:
            raise ValueError("The super-resolution U-Net needs num_classes = augment levels.")
        if labels is None:
            labels = jnp.zeros((x.shape[0],), jnp.int32)
        h = jnp.concatenate([x, upsample(low_res.astype(x.dtype), self.factor)], axis=-1)
        out = self.unet(h, t, labels=labels, train=train)
        return out if out.shape[-1] == x.shape[-1] else out[..., : x.shape[-1]]


def conditioned_model_fn(
    module: SuperResolutionUNet, params: Any, low_res: jax.Array, level: int | jax.Array
) -> Callable[..., jax.Array]:
    """``model_fn(x_t, t)`` of the sampler for one (already augmented) low-resolution batch
    at augmentation level ``level`` (scalar or [B])."""
    labels = jnp.broadcast_to(jnp.asarray(level, jnp.int32), (low_res.shape[0],))

    def model_fn(x, t):
        return module.apply({"params": params}, x, t, low_res=low_res, labels=labels)

    return model_fn
