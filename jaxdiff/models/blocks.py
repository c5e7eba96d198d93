"""U-Net stages: a down level, the middle, an up level (diffusers' block layout and names)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxdiff.models.attention import SpatialSelfAttention, SpatialTransformer
from jaxdiff.models.layers import Downsample, ResBlock, Upsample

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Settings shared by every block of one U-Net (hashable, so it can be a module field)."""

    groups: int
    eps: float
    dropout: float
    scale_shift: bool
    resample: str  # "conv" | "resnet"
    downsample_padding: int
    attention_type: str  # "self" | "transformer"
    transformer_eps: float
    linear_projection: bool
    gelu_approximate: bool
    implementation: str
    remat: bool
    dtype: Dtype
    param_dtype: Dtype

    def res(self, features: int, name: str, resample: str | None = None, scale: float = 1.0):
        """A ResBlock (rematerialised when ``remat``), created in the calling module."""
        cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        return cls(
            features, self.groups, self.eps, self.dropout, self.scale_shift, resample, scale,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )  # fmt: skip

    def attend(
        self,
        x: jax.Array,
        context: jax.Array | None,
        train: bool,
        *,
        heads: int,
        depth: int,
        name: str,
        norm: bool = True,
        groups: int | None = None,
        scale: float = 1.0,
    ) -> jax.Array:
        """Apply the attention block of this U-Net's ``attention_type`` (self or transformer)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        if self.attention_type == "self":
            cls = nn.remat(SpatialSelfAttention, static_argnums=(2,)) if self.remat else None
            module = (cls or SpatialSelfAttention)(
                heads, groups or self.groups, self.eps, norm, scale, self.dropout,
                self.implementation, **kw,
            )  # fmt: skip
            return module(x, train)
        cls = nn.remat(SpatialTransformer, static_argnums=(3,)) if self.remat else None
        module = (cls or SpatialTransformer)(
            heads, depth, groups or self.groups, self.transformer_eps, self.linear_projection,
            self.dropout, self.gelu_approximate, self.implementation, **kw,
        )  # fmt: skip
        return module(x, context, train)


class DownBlock(nn.Module):
    """``num_res`` ResBlocks (each optionally followed by attention), then a downsampler."""

    spec: BlockSpec
    features: int
    num_res: int
    heads: int = 0  # 0: no attention at this level
    depth: int = 1
    downsample: bool = True

    @nn.compact
    def __call__(self, h, emb_act, context, train):
        """Returns the output and the skip activations it produced (in order)."""
        s, skips = self.spec, []
        for j in range(self.num_res):
            h = s.res(self.features, f"resnets_{j}")(h, emb_act, train)
            if self.heads:
                h = s.attend(h, context, train, heads=self.heads, depth=self.depth,
                             name=f"attentions_{j}")  # fmt: skip
            skips.append(h)
        if self.downsample:
            if s.resample == "resnet":
                h = s.res(self.features, "downsamplers_0", "down")(h, emb_act, train)
            else:
                h = Downsample(
                    self.features, s.downsample_padding, s.dtype, s.param_dtype,
                    name="downsamplers_0",
                )(h)  # fmt: skip
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """ResBlock, attention (optional), ResBlock; all outputs divided by ``scale``."""

    spec: BlockSpec
    heads: int = 0
    depth: int = 1
    attention_norm: bool = True
    attention_groups: int | None = None
    scale: float = 1.0

    @nn.compact
    def __call__(self, h, emb_act, context, train):
        s, c = self.spec, h.shape[-1]
        h = s.res(c, "resnets_0", scale=self.scale)(h, emb_act, train)
        if self.heads:
            h = s.attend(
                h, context, train, heads=self.heads, depth=self.depth, name="attentions_0",
                norm=self.attention_norm, groups=self.attention_groups, scale=self.scale,
            )  # fmt: skip
        return s.res(c, "resnets_1", scale=self.scale)(h, emb_act, train)


class UpBlock(nn.Module):
    """``num_res`` ResBlocks on [h, skip] concatenations (optionally with attention), upsampler.

    With ``skips`` None the ResBlocks take h alone (the autoencoder's decoder blocks).
    """

    spec: BlockSpec
    features: int
    num_res: int
    heads: int = 0
    depth: int = 1
    upsample: bool = True

    @nn.compact
    def __call__(self, h, skips: Sequence[jax.Array] | None, emb_act, context, train):
        s = self.spec
        skips = None if skips is None else list(skips)
        for j in range(self.num_res):
            if skips is not None:
                h = jax.numpy.concatenate([h, skips.pop()], axis=-1)
            h = s.res(self.features, f"resnets_{j}")(h, emb_act, train)
            if self.heads:
                h = s.attend(h, context, train, heads=self.heads, depth=self.depth,
                             name=f"attentions_{j}")  # fmt: skip
        if self.upsample:
            if s.resample == "resnet":
                h = s.res(self.features, "upsamplers_0", "up")(h, emb_act, train)
            else:
                h = Upsample(self.features, s.dtype, s.param_dtype, name="upsamplers_0")(h)
        return h
