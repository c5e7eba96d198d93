"""Building blocks of the U-Net: normalisation, time embedding, resampling and residual blocks.

All layers are NHWC. Parameter names follow diffusers' module names (``norm1``, ``conv1``,
``time_emb_proj``, ...) so that checkpoint conversion is a mechanical renaming.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.ops import PAD_1, Conv, Dense, add_per_sample, film, group_norm

Dtype = Any


class GroupNorm(nn.Module):
    """GroupNorm over the last axis with learned ``scale`` and ``bias`` (see `group_norm`)."""

    groups: int = 32
    eps: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return group_norm(x, scale, bias, groups=self.groups, eps=self.eps)


def timestep_embedding(
    t: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    frequencies_i = exp(-log(max_period) * i / (dim // 2 - freq_shift)), i < dim // 2;
    the embedding is [sin(t f), cos(t f)] (or [cos, sin] with ``flip_sin_to_cos``), zero-padded
    to ``dim`` when ``dim`` is odd.

    Args:
      t: timesteps [B].
      dim: embedding width.
      flip_sin_to_cos: put the cosines first.
      freq_shift: shift of the frequency denominator (DDPM used 1, Stable Diffusion 0).
      max_period: the longest period.

    Returns:
      float32 embedding [B, dim].
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepMLP(nn.Module):
    """Two-layer SiLU MLP on the sinusoidal time embedding (``linear_1``, ``linear_2``)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, emb: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = Dense(self.features, name="linear_1", **kw)(emb)
        return Dense(self.features, name="linear_2", **kw)(nn.silu(emb))


@jax.custom_vjp
def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of [B, H, W, C] by broadcast and reshape.

    The gradient adds the four strided phases of the output gradient (an elementwise fusion;
    XLA's reduce over the 2x2 blocks was the slowest op of a CPU train step).
    """
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def _sum_phases(y: jax.Array) -> jax.Array:
    """[B, 2H, 2W, C] -> [B, H, W, C] sums of the 2x2 blocks, as four strided slices."""
    return (y[:, 0::2, 0::2] + y[:, 1::2, 0::2]) + (y[:, 0::2, 1::2] + y[:, 1::2, 1::2])


upsample_nearest.defvjp(lambda x: (upsample_nearest(x), None), lambda _, g: (_sum_phases(g),))


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of [B, H, W, C] (H and W even)."""
    return _sum_phases(x) * jnp.asarray(0.25, x.dtype)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``conv``); ``padding`` 1 pads (1, 1), 0 pads (0, 1)."""

    features: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = PAD_1 if self.padding == 1 else ((0, 1), (0, 1))
        conv = Conv(self.features, 3, 2, pad, self.dtype, self.param_dtype, name="conv")
        return conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 convolution (``conv``)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = Conv(self.features, 3, 1, PAD_1, self.dtype, self.param_dtype, name="conv")
        return conv(upsample_nearest(x))


class ResBlock(nn.Module):
    """Pre-activation residual block with an optional time-embedding input.

    h = conv1(act(norm1(x))) (+ emb), then norm2 (FiLM ``(1 + scale) * h + shift`` with
    ``scale_shift``), act, dropout, conv2; output (shortcut(x) + h) / ``output_scale``.
    With ``resample`` "down" / "up" both paths are average-pooled / upsampled after the first
    activation (BigGAN-style resampling, as in ADM). Without an embedding (``emb_act`` None, as
    in the autoencoder) the block has no ``time_emb_proj``.
    """

    features: int
    groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    scale_shift: bool = False
    resample: str | None = None  # None | "down" | "up"
    output_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb_act: jax.Array | None, train: bool = False) -> jax.Array:
        """x [B, H, W, Cin], emb_act = silu(time embedding) [B, E] or None -> [B, H', W', F]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(GroupNorm(self.groups, self.eps, self.param_dtype, name="norm1")(x))
        if self.resample == "down":
            x, h = avg_pool2(x), avg_pool2(h)
        elif self.resample == "up":
            x, h = upsample_nearest(x), upsample_nearest(h)
        h = Conv(self.features, name="conv1", **kw)(h)
        e = None
        if emb_act is not None:
            n_emb = 2 * self.features if self.scale_shift else self.features
            e = Dense(n_emb, name="time_emb_proj", **kw)(emb_act)
        elif self.scale_shift:
            raise ValueError("ResBlock: scale_shift needs a time embedding, got emb_act=None.")
        norm2 = GroupNorm(self.groups, self.eps, self.param_dtype, name="norm2")
        if e is None:
            h = norm2(h)
        elif self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = film(norm2(h), scale, shift)
        else:
            h = norm2(add_per_sample(h, e))
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        h = Conv(self.features, name="conv2", **kw)(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, 1, padding=((0, 0), (0, 0)), name="conv_shortcut", **kw)(x)
        out = x + h
        return out if self.output_scale == 1.0 else out / self.output_scale
