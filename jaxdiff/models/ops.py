"""Convolution, dense and normalisation layers tuned for XLA's CPU backend.

Parameter names and initialisers match `flax.linen.Conv` / `flax.linen.Dense`. GroupNorm has a
custom VJP (reverse-mode only: ``jax.jvp`` through it is not supported) whose statistics and
gradient sums are plain reductions. Measured on a 2-core AVX-512 CPU (Zen 5, jax 0.10.2):
``jnp.sum`` over the spatial axis was 2-3x faster than the same sum written as a matmul with a
row of ones (which needs a transposed copy of its input), and moving GroupNorm's and the bias
gradients' sums from matmuls to reductions took the DDPM-style U-Net's train step from ~91 to
~82 ms.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Explicit padding: Flax's "SAME" pads a stride-2 convolution by (0, 1), PyTorch by (1, 1).
PAD_1 = ((1, 1), (1, 1))
_F32 = jnp.float32


def _sum_rows(x: jax.Array) -> jax.Array:
    """[B, N, C] -> float32 [B, C] sums over N."""
    return jnp.sum(x, axis=1, dtype=_F32)


def bias_add(x: jax.Array, bias: jax.Array) -> jax.Array:
    """x [..., C] + bias [C], in the dtype of x."""
    return x + bias.astype(x.dtype)


def add_per_sample(x: jax.Array, v: jax.Array) -> jax.Array:
    """x [B, ..., C] + v [B, C] broadcast over the middle axes."""
    return x + v.reshape(v.shape[:1] + (1,) * (x.ndim - 2) + v.shape[1:]).astype(x.dtype)


def film(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """x [B, ..., C] * (1 + scale [B, C]) + shift [B, C] (feature-wise modulation)."""
    shape = scale.shape[:1] + (1,) * (x.ndim - 2) + scale.shape[1:]
    scale, shift = scale.reshape(shape).astype(x.dtype), shift.reshape(shape).astype(x.dtype)
    return x * (1 + scale) + shift


def _im2col_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1, (1, 1)-padded 3x3 convolution as one matmul (fast at tiny spatial sizes)."""
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return jnp.matmul(jnp.concatenate(cols, axis=-1), kernel.reshape(-1, kernel.shape[-1]))


class Conv(nn.Module):
    """NHWC 2-D convolution with ``kernel`` [k, k, Cin, Cout] (HWIO) and ``bias``.

    1x1 convolutions are matmuls; stride-1 3x3 convolutions on at most 4x4 pixels are one
    im2col matmul (XLA's convolution is several times slower there); the rest call
    `jax.lax.conv_general_dilated` with explicit padding.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: tuple = PAD_1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1 and self.stride == 1:
            y = jnp.matmul(x, kernel[0, 0])
        elif (
            k == 3 and self.stride == 1 and self.padding == PAD_1 and x.shape[1] * x.shape[2] <= 16
        ):
            y = _im2col_conv3x3(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )  # fmt: skip
        return bias_add(y, bias)


class Dense(nn.Module):
    """Linear layer on the last axis: ``kernel`` [Cin, Cout], optional ``bias``."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return bias_add(y, bias)


def group_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, *, groups: int, eps: float
) -> jax.Array:
    """Group normalisation of a channels-last tensor, statistics in float32.

    Per-(sample, channel) sums over the spatial positions (mean first, then the centred second
    moment) are reduced to per-group mean and variance and folded into one per-channel gain and
    shift. The custom VJP is built the same way (with a 3x3 convolution after it, 1.1x faster
    than autodiff at 16x16 pixels and 1.8x at 32x32).

    Args:
      x: input [B, ..., C].
      scale: per-channel gain [C].
      bias: per-channel offset [C].
      groups: number of groups; must divide C.
      eps: added to the group variance.

    Returns:
      The normalised tensor, same shape and dtype as ``x``.
    """
    if x.shape[-1] % groups:
        raise ValueError(
            f"group_norm: {x.shape[-1]} channels are not divisible into {groups} groups."
        )
    return _group_norm(x, scale, bias, groups, eps)


def _per_channel(v: jax.Array, per: int) -> jax.Array:
    return jnp.repeat(v, per, axis=1)


def _gn_forward(x, scale, bias, groups, eps):
    b, c = x.shape[0], x.shape[-1]
    per = c // groups
    xf = x.astype(jnp.float32).reshape(b, -1, c)
    n = xf.shape[1] * per
    mean_g = _sum_rows(xf).reshape(b, groups, per).sum(-1) / n  # [B, G]
    mean_c = _per_channel(mean_g, per)  # [B, C]
    # Two passes: E[x^2] - E[x]^2 loses most digits when |mean| >> std (seen with one channel
    # per group on 4x4 pixels: 6e-5 x std output error against 1e-6 centred).
    centred = xf - mean_c[:, None]
    var_g = _sum_rows(centred * centred).reshape(b, groups, per).sum(-1) / n
    rstd_c = _per_channel(jax.lax.rsqrt(var_g + eps), per)
    gain = rstd_c * scale.astype(jnp.float32)
    shift = bias.astype(jnp.float32) - mean_c * gain
    y = (xf * gain[:, None] + shift[:, None]).reshape(x.shape).astype(x.dtype)
    return y, (x, scale, bias, mean_c, rstd_c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups, eps):
    return _gn_forward(x, scale, bias, groups, eps)[0]


def _gn_fwd(x, scale, bias, groups, eps):
    return _gn_forward(x, scale, bias, groups, eps)


def _gn_bwd(groups, eps, res, dy):
    # xhat = (x - m) r;  dx = r (g dy - mean_G(g dy) - xhat mean_G(g dy xhat)).
    x, scale, bias, mean_c, rstd_c = res
    b, c = x.shape[0], x.shape[-1]
    per = c // groups
    xf = x.astype(jnp.float32).reshape(b, -1, c)
    dyf = dy.astype(jnp.float32).reshape(b, -1, c)
    n = xf.shape[1] * per
    g = scale.astype(jnp.float32)
    centred = xf - mean_c[:, None]  # centred, as in the forward (no E[x y] - E[x] E[y])
    s_dy = _sum_rows(dyf)  # [B, C]
    s_dy_xhat = rstd_c * _sum_rows(dyf * centred)
    k1 = _per_channel((g * s_dy).reshape(b, groups, per).sum(-1) / n, per)
    k2 = _per_channel((g * s_dy_xhat).reshape(b, groups, per).sum(-1) / n, per)
    a = rstd_c * g
    cx = -rstd_c * rstd_c * k2
    c0 = -rstd_c * k1
    dx = dyf * a[:, None] + centred * cx[:, None] + c0[:, None]
    return (
        dx.reshape(x.shape).astype(x.dtype),
        s_dy_xhat.sum(0).astype(scale.dtype),
        s_dy.sum(0).astype(bias.dtype),
    )


_group_norm.defvjp(_gn_fwd, _gn_bwd)
