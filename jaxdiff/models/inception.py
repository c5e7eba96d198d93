"""The FID Inception-v3 (pool3 features) in Flax Linen, NHWC, inference only.

This is the network of the 2015-12-05 TensorFlow graph that FID (Heusel et al. 2017) is defined
on, as pytorch-fid rebuilds it (``pytorch_fid.inception.InceptionV3`` with
``use_fid_inception=True``): torchvision's Inception-v3 layout with the blocks that the TF graph
computes differently replaced (pytorch-fid's ``FIDInceptionA / C / E_1 / E_2``):

- the 3x3 average pools inside Mixed_5b-d, 6b-e and 7b average over the valid pixels only
  (TensorFlow's ``SAME`` average pool; PyTorch's default would count the zero padding);
- Mixed_7c's pool branch takes a 3x3 *max* pool (stride 1, padded) where the paper and
  torchvision have an average pool.

The input is bilinearly resized to 299 x 299 exactly as pytorch-fid does
(``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing even when shrinking),
then mapped from [0, 1] to [-1, 1]. The output is the 2048-d average of Mixed_7c ("pool3").

Parameter names mirror the PyTorch state dict (``Mixed_5b.branch1x1.conv.weight`` <->
``Mixed_5b/branch1x1/conv/kernel``; ``bn.weight / bias / running_mean / running_var`` <->
``bn/scale / bias / mean / var``). Batch-norm statistics are stored in ``params`` (the model is
never trained). Loading the weight file: `jaxdiff.models.convert_inception`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d
# Convolutions and the resize run at full float32 precision: on GPUs XLA's default may use
# TF32 / bf16 passes, which moves pool3 features by ~1e-3 relative (far above parity).
_HIGHEST = jax.lax.Precision.HIGHEST


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of PyTorch's 1-D bilinear interpolation (align_corners=False).

    Row o samples the input at s = (o + 0.5) * in / out - 0.5, clamped below at 0, between
    pixels floor(s) and floor(s) + 1 (the last pixel repeats at the right edge). Built in
    float64; PyTorch computes the same weights in float32.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    m = np.zeros((out_size, in_size))
    np.add.at(m, (np.arange(out_size), i0), 1.0 - lam)
    np.add.at(m, (np.arange(out_size), i1), lam)
    return m


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize NHWC images like ``F.interpolate(mode="bilinear", align_corners=False)``."""
    rows = jnp.asarray(bilinear_matrix(x.shape[1], size[0]), jnp.float32)
    cols = jnp.asarray(bilinear_matrix(x.shape[2], size[1]), jnp.float32)
    x = jnp.einsum("oh,bhwc->bowc", rows, x.astype(jnp.float32), precision=_HIGHEST)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=_HIGHEST)


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


def _avg_pool_valid(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average over the pixels inside the image (TF's SAME average pool)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=_pad(1), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2, padding: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), padding=_pad(padding))


class BasicConv(nn.Module):
    """Bias-free convolution, inference batch norm (eps 1e-3), ReLU (torchvision's
    ``BasicConv2d``)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: int | tuple[int, int] = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = nn.Conv(
            self.features, self.kernel, (self.stride, self.stride), padding=_pad(self.padding),
            use_bias=False, dtype=self.dtype, precision=_HIGHEST, name="conv",
        )  # fmt: skip
        y = conv(x).astype(jnp.float32)
        bn = _BatchNorm(name="bn")
        return nn.relu(bn(y)).astype(self.dtype)


class _BatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        return (x - mean) * (jax.lax.rsqrt(var + BN_EPS) * scale) + bias


class InceptionA(nn.Module):
    """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | valid-average pool-1x1 (FIDInceptionA)."""

    pool_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=1, p=0, name=None: BasicConv(f, (k, k), 1, p, self.dtype, name=name)
        b1 = c(64, name="branch1x1")(x)
        b5 = c(64, 5, 2, name="branch5x5_2")(c(48, name="branch5x5_1")(x))
        b3 = c(64, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, 1, name="branch3x3dbl_3")(c(96, 3, 1, name="branch3x3dbl_2")(b3))
        bp = c(self.pool_features, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype)
        b3 = BasicConv(384, (3, 3), 2, name="branch3x3", **kw)(x)
        d = BasicConv(64, name="branch3x3dbl_1", **kw)(x)
        d = BasicConv(96, (3, 3), 1, 1, name="branch3x3dbl_2", **kw)(d)
        d = BasicConv(96, (3, 3), 2, name="branch3x3dbl_3", **kw)(d)
        return jnp.concatenate([b3, d, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches (1x7 / 7x1) and a valid-average pool branch."""

    channels_7x7: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7

        def c(f, k=(1, 1), p=0, name=None):
            return BasicConv(f, k, 1, p, self.dtype, name=name)

        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        b1 = c(192, name="branch1x1")(x)
        b7 = c(c7, name="branch7x7_1")(x)
        b7 = c(c7, *row, name="branch7x7_2")(b7)
        b7 = c(192, *col, name="branch7x7_3")(b7)
        d = c(c7, name="branch7x7dbl_1")(x)
        for i, (k, p) in enumerate([col, row, col], start=2):
            d = c(c7, k, p, name=f"branch7x7dbl_{i}")(d)
        d = c(192, *row, name="branch7x7dbl_5")(d)
        bp = c(192, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b7, d, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype)
        b3 = BasicConv(192, name="branch3x3_1", **kw)(x)
        b3 = BasicConv(320, (3, 3), 2, name="branch3x3_2", **kw)(b3)
        b7 = BasicConv(192, name="branch7x7x3_1", **kw)(x)
        b7 = BasicConv(192, (1, 7), 1, (0, 3), name="branch7x7x3_2", **kw)(b7)
        b7 = BasicConv(192, (7, 1), 1, (3, 0), name="branch7x7x3_3", **kw)(b7)
        b7 = BasicConv(192, (3, 3), 2, name="branch7x7x3_4", **kw)(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c: expanded 1x3 + 3x1 branches; ``pool="avg"`` (7b, valid-pixel average)
    or ``"max"`` (7c, the TF graph's max pool)."""

    pool: str = "avg"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def c(f, k=(1, 1), p=0, name=None):
            return BasicConv(f, k, 1, p, self.dtype, name=name)

        def split(h, prefix):  # [1x3 | 3x1] on the same input
            a = c(384, (1, 3), (0, 1), name=f"{prefix}a")(h)
            return jnp.concatenate([a, c(384, (3, 1), (1, 0), name=f"{prefix}b")(h)], axis=-1)

        b1 = c(320, name="branch1x1")(x)
        b3 = split(c(384, name="branch3x3_1")(x), "branch3x3_2")
        d = c(448, name="branch3x3dbl_1")(x)
        d = split(c(384, (3, 3), 1, name="branch3x3dbl_2")(d), "branch3x3dbl_3")
        pooled = _avg_pool_valid(x) if self.pool == "avg" else _max_pool(x, 1, 1)
        bp = c(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, d, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3: images [B, H, W, 3] in [0, 1] -> pool3 [B, 2048].

    Attributes:
      resize_input: resize to 299 x 299 first (pytorch-fid's default; FID is defined on it).
        Without it any size >= 75 x 75 runs, as in pytorch-fid.
      dtype: compute dtype of the convolutions (float32 for published-comparable FID).
    """

    resize_input: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        x = (2.0 * x - 1.0).astype(self.dtype)
        kw = dict(dtype=self.dtype)
        x = BasicConv(32, (3, 3), 2, name="Conv2d_1a_3x3", **kw)(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3", **kw)(x)
        x = _max_pool(BasicConv(64, (3, 3), 1, 1, name="Conv2d_2b_3x3", **kw)(x))
        x = BasicConv(80, name="Conv2d_3b_1x1", **kw)(x)
        x = _max_pool(BasicConv(192, (3, 3), name="Conv2d_4a_3x3", **kw)(x))
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name, **kw)(x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = InceptionC(c7, name=name, **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = InceptionE("avg", name="Mixed_7b", **kw)(x)
        x = InceptionE("max", name="Mixed_7c", **kw)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
