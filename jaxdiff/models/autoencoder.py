"""KL-regularised autoencoder of latent diffusion (Rombach et al. 2022), NHWC.

The architecture of diffusers' ``AutoencoderKL`` (the Stable Diffusion, SDXL, SD3 and Flux
VAEs), built from the U-Net's blocks. Encoder: ``conv_in``; per level a `DownBlock` of
``layers_per_block`` ResBlocks followed, except at the last level, by a stride-2 3x3
convolution padded (0, 1) on the bottom and right; the middle (ResBlock, one-head
self-attention, ResBlock); GroupNorm, SiLU and ``conv_out`` to 2 x ``latent_channels`` moments
(mean, log-variance); a 1x1 ``quant_conv``. Decoder: a 1x1 ``post_quant_conv``, ``conv_in``, the
middle, per level from the deepest an `UpBlock` of ``layers_per_block + 1`` ResBlocks followed,
except at the last, by nearest 2x upsampling and a convolution; GroupNorm, SiLU, ``conv_out``.
Every norm uses epsilon 1e-6, as diffusers fixes it. Parameter names follow diffusers' modules,
so `jaxdiff.models.convert_vae` converts checkpoints by renaming.

Latents for a diffusion model are ``(z - mean) * scaling_factor / std`` where mean is
``shift_factor`` (SD3, Flux) or the per-channel ``latents_mean`` (0 when neither is set) and
std the per-channel ``latents_std`` (1 when not set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import attention as attention_lib
from jaxdiff.models.blocks import BlockSpec, DownBlock, MidBlock, UpBlock
from jaxdiff.models.layers import GroupNorm
from jaxdiff.models.ops import Conv

Dtype = Any

NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
_PAD_0 = ((0, 0), (0, 0))


class DiagonalGaussian(NamedTuple):
    """The encoder's posterior q(z | x) = N(mean, exp(logvar)), per latent element."""

    mean: jax.Array  # [B, h, w, latent_channels]
    logvar: jax.Array  # [B, h, w, latent_channels], clipped to LOGVAR_RANGE

    def sample(self, key: jax.Array) -> jax.Array:
        """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) drawn from ``key``."""
        eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(0.5 * self.logvar) * eps

    def mode(self) -> jax.Array:
        """The most likely latent (the mean)."""
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q(z | x) || N(0, I)) per example, summed over the latent elements: [B]."""
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, self.mean.ndim)))


class Encoder(nn.Module):
    """Image [B, H, W, C] -> moments [B, H / f, W / f, out_channels] (see the module doc)."""

    spec: BlockSpec
    channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    mid_attention: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s, n = self.spec, len(self.channels)
        kw = dict(dtype=s.dtype, param_dtype=s.param_dtype)
        h = Conv(self.channels[0], name="conv_in", **kw)(x)
        for lv, c in enumerate(self.channels):
            block = DownBlock(s, c, self.layers_per_block, downsample=lv < n - 1,
                              name=f"down_blocks_{lv}")  # fmt: skip
            h, _ = block(h, None, None, False)
        h = MidBlock(s, int(self.mid_attention), name="mid_block")(h, None, None, False)
        h = nn.silu(GroupNorm(s.groups, s.eps, s.param_dtype, name="conv_norm_out")(h))
        return Conv(self.out_channels, name="conv_out", **kw)(h)


class Decoder(nn.Module):
    """Latent [B, h, w, C] -> image [B, h * f, w * f, out_channels] (see the module doc)."""

    spec: BlockSpec
    channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    mid_attention: bool

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        s = self.spec
        kw = dict(dtype=s.dtype, param_dtype=s.param_dtype)
        h = Conv(self.channels[-1], name="conv_in", **kw)(z)
        h = MidBlock(s, int(self.mid_attention), name="mid_block")(h, None, None, False)
        for i, lv in enumerate(reversed(range(len(self.channels)))):
            block = UpBlock(s, self.channels[lv], self.layers_per_block + 1, upsample=lv > 0,
                            name=f"up_blocks_{i}")  # fmt: skip
            h = block(h, None, None, None, False)
        h = nn.silu(GroupNorm(s.groups, s.eps, s.param_dtype, name="conv_norm_out")(h))
        return Conv(self.out_channels, name="conv_out", **kw)(h)


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` (module docstring): images <-> Gaussian latents.

    Attributes:
      in_channels / out_channels: image channels in and out.
      latent_channels: channels of z (4 for SD 1.x / 2.x / SDXL, 16 for SD3 / Flux).
      channels: width of each level (diffusers' ``block_out_channels``); the image is
        downsampled by 2 ** (len(channels) - 1).
      layers_per_block: ResBlocks per encoder level (the decoder has one more).
      norm_groups: groups of every GroupNorm.
      mid_attention: self-attention in the middle of the encoder and decoder.
      use_quant_conv / use_post_quant_conv: the 1x1 convolutions around the latent.
      scaling_factor / shift_factor / latents_mean / latents_std: the latent normalisation
        (module docstring); shift_factor and latents_mean exclude each other.
      attention_impl: "auto", "xla" or "flash" (see `jaxdiff.models.attention`).
      remat: rematerialise every ResBlock and attention block in the backward pass.
      dtype / param_dtype: computation and parameter dtypes (norm statistics stay float32).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    norm_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: Sequence[float] | None = None
    latents_std: Sequence[float] | None = None
    attention_impl: str = "auto"
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        validate(self)
        super().__post_init__()

    @property
    def downsampling_factor(self) -> int:
        """Image pixels per latent pixel along each axis."""
        return 2 ** (len(self.channels) - 1)

    def setup(self):
        spec = BlockSpec(
            groups=self.norm_groups, eps=NORM_EPS, dropout=0.0, scale_shift=False,
            resample="conv", downsample_padding=0, attention_type="self", transformer_eps=NORM_EPS,
            linear_projection=False, gelu_approximate=False, implementation=self.attention_impl,
            remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels, layers = tuple(self.channels), self.layers_per_block
        self.encoder = Encoder(spec, channels, layers, 2 * self.latent_channels,
                               self.mid_attention)  # fmt: skip
        self.decoder = Decoder(spec, channels, layers, self.out_channels, self.mid_attention)
        if self.use_quant_conv:
            self.quant_conv = Conv(2 * self.latent_channels, 1, padding=_PAD_0, **kw)
        if self.use_post_quant_conv:
            self.post_quant_conv = Conv(self.latent_channels, 1, padding=_PAD_0, **kw)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """Posterior of images x [B, H, W, in_channels]; unpacks as ``mean, logvar = ...``.

        Raises:
          ValueError: when x is not NHWC with ``in_channels`` channels, or H or W is not a
            multiple of `downsampling_factor`.
        """
        check_image(self, x)
        moments = self.encoder(x)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        moments = moments.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    def decode(self, z: jax.Array) -> jax.Array:
        """Images [B, h * f, w * f, out_channels] from unscaled latents z [B, h, w, C]."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"AutoencoderKL: z must be [B, h, w, {self.latent_channels}] "
                f"(latent_channels={self.latent_channels}), got shape {z.shape}."
            )
        h = self.post_quant_conv(z) if self.use_post_quant_conv else z
        return self.decoder(h).astype(jnp.promote_types(z.dtype, jnp.float32))

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction of x from a posterior sample (from ``key``; the mean when None)."""
        posterior = self.encode(x)
        z = posterior.mean if key is None else posterior.sample(key)
        return self.decode(z), posterior

    def to_latents(self, z: jax.Array) -> jax.Array:
        """Diffusion-model latents (z - mean) * scaling_factor / std (module docstring)."""
        mean, std = _latent_stats(self, z.dtype)
        return (z - mean) * (self.scaling_factor / std)

    def from_latents(self, latents: jax.Array) -> jax.Array:
        """The inverse of `to_latents`: z = latents * std / scaling_factor + mean."""
        mean, std = _latent_stats(self, latents.dtype)
        return latents * (std / self.scaling_factor) + mean

    def encode_latents(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Images -> scaled latents: a posterior sample from ``key`` (the mean when None)."""
        posterior = self.encode(x)
        z = posterior.mean if key is None else posterior.sample(key)
        return self.to_latents(z)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents (as `encode_latents` returns) -> images."""
        return self.decode(self.from_latents(latents))


def _latent_stats(m: AutoencoderKL, dtype) -> tuple[jax.Array, jax.Array]:
    if m.latents_mean is not None:
        mean = jnp.asarray(m.latents_mean, dtype)
    else:
        mean = jnp.asarray(m.shift_factor or 0.0, dtype)
    std = jnp.asarray(1.0 if m.latents_std is None else m.latents_std, dtype)
    return mean, std


def validate(m: AutoencoderKL) -> None:
    """Raise ValueError on an inconsistent configuration (called when the module is built)."""
    if len(m.channels) < 1:
        raise ValueError("AutoencoderKL: channels must name at least one level.")
    for name in ("in_channels", "out_channels", "latent_channels", "norm_groups"):
        if getattr(m, name) < 1:
            raise ValueError(f"AutoencoderKL: {name} must be >= 1, got {getattr(m, name)}.")
    if m.layers_per_block < 1:
        raise ValueError(f"AutoencoderKL: layers_per_block must be >= 1, got {m.layers_per_block}.")
    for lv, c in enumerate(m.channels):
        if c % m.norm_groups:
            raise ValueError(
                f"AutoencoderKL: level {lv} has {c} channels, not divisible by "
                f"norm_groups={m.norm_groups}."
            )
    if not m.scaling_factor:
        raise ValueError("AutoencoderKL: scaling_factor must be non-zero.")
    if m.shift_factor is not None and m.latents_mean is not None:
        raise ValueError("AutoencoderKL: give shift_factor or latents_mean, not both.")
    for name in ("latents_mean", "latents_std"):
        value = getattr(m, name)
        if value is not None and len(value) != m.latent_channels:
            raise ValueError(
                f"AutoencoderKL: {name} has {len(value)} entries for "
                f"latent_channels={m.latent_channels}."
            )
    if m.latents_std is not None and any(s <= 0 for s in m.latents_std):
        raise ValueError(f"AutoencoderKL: latents_std must be positive, got {m.latents_std}.")
    attention_lib.check_implementation(m.attention_impl)


def check_image(m: AutoencoderKL, x: jax.Array) -> None:
    """Raise ValueError unless x is [B, H, W, in_channels] with H, W multiples of the factor."""
    if x.ndim != 4 or x.shape[-1] != m.in_channels:
        raise ValueError(
            f"AutoencoderKL: images must be NHWC [B, H, W, {m.in_channels}] "
            f"(in_channels={m.in_channels}), got shape {x.shape}."
        )
    factor = m.downsampling_factor
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"AutoencoderKL: image size {x.shape[1]}x{x.shape[2]} is not a multiple of the "
            f"downsampling factor {factor} ({len(m.channels)} levels)."
        )
