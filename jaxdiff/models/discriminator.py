"""PatchGAN discriminator (Isola et al. 2017, pix2pix), as used by latent diffusion's VAE loss.

The layout of taming-transformers' ``NLayerDiscriminator``: a 4x4 stride-2 convolution with
LeakyReLU(0.2); ``num_layers - 1`` more 4x4 stride-2 convolutions, each doubling the width (at
most 8x ``channels``) followed by batch normalisation and LeakyReLU; one 4x4 stride-1
convolution of the same kind; and a 4x4 stride-1 convolution to one logit per patch. Every
convolution pads 1 pixel on each side. Weights are drawn from N(0, 0.02) and normalisation
scales from N(1, 0.02), as pix2pix initialises them.

Batch normalisation uses the statistics of the batch it is given (a discriminator is only ever
run while training, so no running averages are kept and the module holds parameters only).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.ops import PAD_1

BN_EPS = 1e-5
LEAK = 0.2


def _normal(mean: float, std: float):
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


class _Conv4(nn.Module):
    """4x4 convolution padded by 1 on each side, weights from N(0, 0.02)."""

    features: int
    stride: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _normal(0.0, 0.02), (4, 4, x.shape[-1], self.features))
        y = jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), PAD_1, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class _BatchNorm(nn.Module):
    """Normalisation by the batch's per-channel mean and variance, with a learned affine."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", _normal(1.0, 0.02), (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


class PatchDiscriminator(nn.Module):
    """Images [B, H, W, C] -> patch logits [B, h, w, 1] (see the module docstring).

    Attributes:
      channels: width of the first convolution (64 in pix2pix and latent diffusion).
      num_layers: stride-2 convolutions (3 in pix2pix); each output logit sees a patch of
        70x70 pixels for 3 layers, 34x34 for 2, 16x16 for 1.
    """

    channels: int = 64
    num_layers: int = 3

    def __post_init__(self):
        if self.channels < 1 or self.num_layers < 1:
            raise ValueError(
                f"PatchDiscriminator: channels and num_layers must be >= 1; got "
                f"channels={self.channels}, num_layers={self.num_layers}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.leaky_relu(_Conv4(self.channels, 2)(x), LEAK)
        for n in range(1, self.num_layers + 1):
            width = self.channels * min(2**n, 8)
            stride = 2 if n < self.num_layers else 1
            h = _BatchNorm()(_Conv4(width, stride, use_bias=False)(h))
            h = nn.leaky_relu(h, LEAK)
        return _Conv4(1, 1)(h)
