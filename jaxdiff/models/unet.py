"""The U-Net: DDPM / ADM / latent-diffusion family in one configurable Flax module.

Calling convention (shared by every preset)::

    out = model.apply({"params": params}, x, t, labels=None, context=None, train=False,
                      rngs={"dropout": key})

x [B, H, W, C] NHWC; t [B] (possibly fractional) training timesteps; labels int [B] class ids
in [0, num_classes], where id ``num_classes`` is the null class used by classifier-free
guidance (``labels=None`` means that null class for every example); context [B, L, D] encoder
states for cross-attention. SDXL-style models (``addition_embed_type="text_time"``) also take
``text_embeds`` [B, P] (the pooled text embedding) and ``time_ids`` [B, M] (size and crop
conditions, e.g. M = 6), called as ``apply(..., context=c, text_embeds=p, time_ids=ids)``.
The output has x's shape, or ``out_channels`` channels (e.g.
2 C for a learned variance). Parameter names follow diffusers' UNet2DModel /
UNet2DConditionModel, which `jaxdiff.models.convert` relies on.

Differentiation is reverse-mode (`jax.grad`, `jax.vjp`): group norm, bias additions and the
"flash" attention have custom VJPs that compute their gradient sums as matmuls (much faster
on CPU); `jax.jvp` through the model is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import attention as attention_lib
from jaxdiff.models.blocks import BlockSpec, DownBlock, MidBlock, UpBlock
from jaxdiff.models.layers import GroupNorm, TimestepMLP, timestep_embedding
from jaxdiff.models.ops import Conv

Dtype = Any


def _per_level(value, n: int, name: str) -> tuple:
    if isinstance(value, int | type(None)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"UNet: {name} has {len(value)} entries, expected one per level ({n}).")
    return value


class UNet(nn.Module):
    """Configurable diffusion U-Net (see the module docstring for the calling convention).

    Attributes:
      channels: output channels per level (diffusers' ``block_out_channels``).
      num_res_blocks: ResBlocks per down level (int or one per level); up levels have one more.
      attention_levels: indices of the levels that have attention after each ResBlock.
      mid_attention: attention between the two middle ResBlocks.
      attention_type: "self" (group norm + multi-head self-attention + residual: DDPM, ADM) or
        "transformer" (self + cross-attention + GEGLU transformer blocks: latent diffusion).
      num_heads: heads per attention block (int or one per level); exclusive with head_dim.
      head_dim: channels per head; with neither set, attention has one head.
      transformer_depth: transformer blocks per attention block (int or one per level).
      context_dim: width D of the cross-attention context [B, L, D] (transformer only).
      linear_projection: transformer in/out projections are linear instead of 1x1 convs.
      transformer_norm_eps: epsilon of the transformer's group norm.
      gelu_approximate: tanh-approximate GELU in the feed-forward.
      num_classes: number of classes; the embedding has num_classes + 1 rows (null class last).
        None or 0: no class conditioning.
      addition_embed_type: None, or "text_time" (SDXL): the time embedding gains
        ``add_embedding([text_embeds, sinusoid(time_ids)])``, a two-layer MLP (diffusers'
        ``add_embedding``) over the pooled text embedding and the sinusoidal embeddings of each
        time id.
      addition_time_embed_dim: width of each time id's sinusoidal embedding ("text_time").
      addition_embed_dim: input width of ``add_embedding``: P + M x addition_time_embed_dim
        (diffusers' ``projection_class_embeddings_input_dim``).
      out_channels: output channels (default: the input's).
      dropout: dropout rate in ResBlocks and attention.
      norm_groups / norm_eps: group norm of ResBlocks, attention and output.
      mid_attention_norm / mid_attention_groups: group norm of the middle attention (diffusers
        drops it for scale-shift models unless ``attn_norm_num_groups`` is set).
      scale_shift_norm: the time embedding scales and shifts the second norm (ADM).
      resample: "conv" (strided / upsampling convs) or "resnet" (BigGAN-style ResBlocks).
      downsample_padding: 1 pads the stride-2 conv (1, 1), 0 pads it (0, 1) as in DDPM.
      flip_sin_to_cos / freq_shift: sinusoidal time-embedding variant.
      time_embed_dim: width of the time embedding (default 4 x channels[0]).
      mid_scale: divisor of the middle block's residual outputs.
      center_input: map inputs from [0, 1] to [-1, 1] first.
      attention_impl: "auto", "xla" or "flash" (see `jaxdiff.models.attention`).
      remat: rematerialise every ResBlock and attention block in the backward pass.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    channels: Sequence[int] = (128, 256, 256, 256)
    num_res_blocks: int | Sequence[int] = 2
    attention_levels: Sequence[int] = (1,)
    mid_attention: bool = True
    attention_type: str = "self"
    num_heads: int | Sequence[int] | None = None
    head_dim: int | None = None
    transformer_depth: int | Sequence[int] = 1
    context_dim: int | None = None
    linear_projection: bool = False
    transformer_norm_eps: float = 1e-6
    gelu_approximate: bool = False
    num_classes: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    addition_embed_dim: int | None = None
    out_channels: int | None = None
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-5
    mid_attention_norm: bool = True
    mid_attention_groups: int | None = None
    scale_shift_norm: bool = False
    resample: str = "conv"
    downsample_padding: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embed_dim: int | None = None
    mid_scale: float = 1.0
    center_input: bool = False
    attention_impl: str = "auto"
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        validate(self)
        super().__post_init__()

    def level_heads(self, level: int) -> int:
        """Number of attention heads at ``level`` (level len(channels) - 1 is also the middle)."""
        if self.num_heads is not None:
            return _per_level(self.num_heads, len(self.channels), "num_heads")[level]
        if self.head_dim is not None:
            return self.channels[level] // self.head_dim
        return 1

    def level_res_blocks(self) -> tuple[int, ...]:
        """ResBlocks per down level."""
        return _per_level(self.num_res_blocks, len(self.channels), "num_res_blocks")

    def level_depth(self, level: int) -> int:
        """Transformer blocks per attention block at ``level``."""
        return _per_level(self.transformer_depth, len(self.channels), "transformer_depth")[level]

    def _spec(self) -> BlockSpec:
        return BlockSpec(
            self.norm_groups, self.norm_eps, self.dropout, self.scale_shift_norm, self.resample,
            self.downsample_padding, self.attention_type, self.transformer_norm_eps,
            self.linear_projection, self.gelu_approximate, self.attention_impl, self.remat,
            self.dtype, self.param_dtype,
        )  # fmt: skip

    def _embed(self, t, labels, batch, text_embeds=None, time_ids=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        temb = timestep_embedding(
            t, self.channels[0], flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )
        dim = self.time_embed_dim or 4 * self.channels[0]
        emb = TimestepMLP(dim, name="time_embedding", **kw)(temb.astype(self.dtype))
        if self.num_classes:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes, jnp.int32)
            table = nn.Embed(self.num_classes + 1, dim, name="class_embedding", **kw)
            emb = emb + table(jnp.asarray(labels).astype(jnp.int32))
        elif labels is not None:
            raise ValueError(
                f"UNet: labels were given but the model has num_classes={self.num_classes}."
            )
        if self.addition_embed_type == "text_time":
            ids = jnp.asarray(time_ids, jnp.float32)
            sinusoids = timestep_embedding(
                ids.reshape(-1), self.addition_time_embed_dim,
                flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
            ).reshape(batch, -1)  # fmt: skip
            extra = jnp.concatenate([jnp.asarray(text_embeds, jnp.float32), sinusoids], axis=-1)
            emb = emb + TimestepMLP(dim, name="add_embedding", **kw)(extra.astype(self.dtype))
        return nn.silu(emb)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        labels: jax.Array | None = None,
        context: jax.Array | None = None,
        train: bool = False,
        text_embeds: jax.Array | None = None,
        time_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Denoiser output for x [B, H, W, C] at timesteps t [B]; see the module docstring."""
        check_inputs(self, x, context)
        check_added_inputs(self, x.shape[0], text_embeds, time_ids)
        n, spec, kw = (
            len(self.channels),
            self._spec(),
            dict(dtype=self.dtype, param_dtype=self.param_dtype),
        )
        nres = self.level_res_blocks()
        emb_act = self._embed(t, labels, x.shape[0], text_embeds, time_ids)
        h = 2 * x - 1 if self.center_input else x
        h = Conv(self.channels[0], name="conv_in", **kw)(h)
        skips = [h]
        for lv in range(n):
            heads = self.level_heads(lv) if lv in self.attention_levels else 0
            block = DownBlock(spec, self.channels[lv], nres[lv], heads, self.level_depth(lv),
                              downsample=lv < n - 1, name=f"down_blocks_{lv}")  # fmt: skip
            h, new = block(h, emb_act, context, train)
            skips += new
        mid = MidBlock(
            spec, self.level_heads(n - 1) if self.mid_attention else 0, self.level_depth(n - 1),
            self.mid_attention_norm, self.mid_attention_groups, self.mid_scale, name="mid_block",
        )  # fmt: skip
        h = mid(h, emb_act, context, train)
        for i, lv in enumerate(reversed(range(n))):
            heads = self.level_heads(lv) if lv in self.attention_levels else 0
            k = nres[lv] + 1
            block = UpBlock(spec, self.channels[lv], k, heads, self.level_depth(lv),
                            upsample=lv > 0, name=f"up_blocks_{i}")  # fmt: skip
            h = block(h, skips[-k:], emb_act, context, train)
            del skips[-k:]
        h = nn.silu(GroupNorm(self.norm_groups, self.norm_eps, self.param_dtype,
                              name="conv_norm_out")(h))  # fmt: skip
        out_ch = self.out_channels or x.shape[-1]
        out = Conv(out_ch, name="conv_out", **kw)(h)
        return out.astype(jnp.promote_types(x.dtype, jnp.float32))


def validate(m: UNet) -> None:
    """Raise ValueError on an inconsistent configuration (called when the module is built)."""
    n = len(m.channels)
    if n < 1:
        raise ValueError("UNet: channels must name at least one level.")
    bad = [lv for lv in m.attention_levels if not 0 <= lv < n]
    if bad:
        raise ValueError(f"UNet: attention_levels {bad} are outside the levels 0..{n - 1}.")
    if m.attention_type not in ("self", "transformer"):
        raise ValueError(
            f"UNet: attention_type {m.attention_type!r} is not 'self' or 'transformer'."
        )
    if m.resample not in ("conv", "resnet"):
        raise ValueError(f"UNet: resample {m.resample!r} is not 'conv' or 'resnet'.")
    if m.downsample_padding not in (0, 1):
        raise ValueError(f"UNet: downsample_padding must be 0 or 1, got {m.downsample_padding}.")
    if m.num_heads is not None and m.head_dim is not None:
        raise ValueError("UNet: give num_heads or head_dim, not both.")
    if m.context_dim is not None and m.attention_type != "transformer":
        raise ValueError("UNet: context_dim needs attention_type='transformer'.")
    attn_levels = set(m.attention_levels) | ({n - 1} if m.mid_attention else set())
    for lv in sorted(attn_levels):
        heads, c = m.level_heads(lv), m.channels[lv]
        if heads < 1 or c % heads:
            raise ValueError(
                f"UNet: level {lv} has {c} channels, not divisible into {heads} heads."
            )
    for lv, c in enumerate(m.channels):
        if c % m.norm_groups:
            raise ValueError(
                f"UNet: level {lv} has {c} channels, not divisible by norm_groups={m.norm_groups}."
            )
    m.level_res_blocks()
    m.level_depth(0)
    attention_lib.check_implementation(m.attention_impl)
    if m.num_classes is not None and m.num_classes < 0:
        raise ValueError(f"UNet: num_classes must be >= 0 or None, got {m.num_classes}.")
    if m.addition_embed_type not in (None, "text_time"):
        raise ValueError(
            f"UNet: addition_embed_type {m.addition_embed_type!r} is not None or 'text_time'."
        )
    if m.addition_embed_type == "text_time":
        dims = (m.addition_time_embed_dim, m.addition_embed_dim)
        if any(d is None or d < 1 for d in dims):
            raise ValueError(
                "UNet: addition_embed_type='text_time' needs addition_time_embed_dim and "
                f"addition_embed_dim >= 1, got {dims}."
            )


def check_added_inputs(m: UNet, batch: int, text_embeds, time_ids) -> None:
    """Raise ValueError unless text_embeds / time_ids fit ``addition_embed_type``."""
    if m.addition_embed_type is None:
        if text_embeds is not None or time_ids is not None:
            raise ValueError(
                "UNet: text_embeds / time_ids were given but the model has "
                "addition_embed_type=None."
            )
        return
    if text_embeds is None or time_ids is None:
        raise ValueError("UNet: addition_embed_type='text_time' needs text_embeds and time_ids.")
    te, ti = jnp.shape(text_embeds), jnp.shape(time_ids)
    width = (te[-1] if len(te) == 2 else 0) + (ti[-1] if len(ti) == 2 else 0) * (
        m.addition_time_embed_dim
    )
    if (
        len(te) != 2
        or len(ti) != 2
        or te[0] != batch
        or ti[0] != batch
        or (width != m.addition_embed_dim)
    ):
        raise ValueError(
            f"UNet: text_embeds {te} and time_ids {ti} must be [{batch}, P] and [{batch}, M] "
            f"with P + M x {m.addition_time_embed_dim} = addition_embed_dim "
            f"{m.addition_embed_dim}."
        )


def check_inputs(m: UNet, x: jax.Array, context: jax.Array | None) -> None:
    """Raise ValueError on inputs the configuration cannot take."""
    if x.ndim != 4:
        raise ValueError(f"UNet: x must be NHWC [B, H, W, C], got shape {x.shape}.")
    factor = 2 ** (len(m.channels) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"UNet: height and width {x.shape[1:3]} must be multiples of {factor} "
            f"({len(m.channels)} levels)."
        )
    if m.context_dim is not None:
        if context is None or context.ndim != 3 or context.shape[-1] != m.context_dim:
            got = None if context is None else context.shape
            raise ValueError(f"UNet: context must be [B, L, {m.context_dim}], got {got}.")
    elif context is not None:
        raise ValueError("UNet: context was given but the model has context_dim=None.")
