"""The T5 encoder (text encoder of Imagen, SD3, Flux, PixArt) in Flax Linen.

Same numerics as transformers' ``T5EncoderModel``: token embeddings ``shared``, RMS norms,
bias-free projections, unscaled attention logits plus a learned relative position bias that
the first layer computes from bucketed distances and every layer reuses, and the feed-forward
of original T5 (``act(wi x)``, ReLU) or of T5 v1.1 (``act(wi_0 x) * wi_1 x``, tanh-GELU, config
``feed_forward_proj="gated-gelu"``). Parameter names mirror transformers' module names (see
`jaxdiff.models.convert_text`). Inference only: no dropout.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.text_ops import (
    ACTIVATIONS,
    Embed,
    RMSNorm,
    TextEncoderOutput,
    attention,
    check_activation,
    check_token_ids,
    padding_mask,
    split_heads,
)

Dtype = Any


def relative_position_buckets(
    length: int, *, num_buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
    """Bidirectional bucket of (key - query) offsets, [L, L] int32, as T5 defines it.

    Half of the buckets hold positive offsets; in each half, distances below a quarter of
    ``num_buckets`` get their own bucket and longer ones logarithmic bins up to
    ``max_distance``. Computed on the host in float32 with transformers' order of operations,
    so the rounding at bin edges (distances 16, 32, 64 by default) is the same.
    """
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    bucket = (offset > 0).astype(np.int64) * half
    distance = np.abs(offset)
    exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(distance.astype(np.float32) / np.float32(exact))
    scaled = log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = exact + np.where(distance < exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (bucket + np.where(distance < exact, distance, large)).astype(np.int32)


class T5Attention(nn.Module):
    """Self-attention with ``q``, ``k``, ``v``, ``o`` (heads x d_kv inner width, no biases).

    With ``relative_bias`` (the first block) it owns the bucket table
    ``relative_attention_bias`` [num_buckets, heads] and computes the position bias that it
    returns for the later blocks to reuse.
    """

    num_heads: int
    d_kv: int
    relative_bias: bool = False
    num_buckets: int = 32
    max_distance: int = 128
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array | None, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.relative_bias:
            table = Embed(
                self.num_buckets, self.num_heads, name="relative_attention_bias",
                param_dtype=self.param_dtype,
            )  # fmt: skip
            buckets = relative_position_buckets(
                x.shape[1], num_buckets=self.num_buckets, max_distance=self.max_distance
            )
            bias = table(jnp.asarray(buckets)).transpose(2, 0, 1)[None]  # float32 [1, H, L, L]
        inner = self.num_heads * self.d_kv
        q, k, v = (split_heads(nn.Dense(inner, name=n, **kw)(x), self.num_heads) for n in "qkv")
        o = attention(q, k, v, scale=1.0, bias=bias, mask=mask)
        return nn.Dense(x.shape[-1], name="o", **kw)(o.reshape(*x.shape[:2], inner)), bias


class T5Block(nn.Module):
    """Encoder block: ``layer_0`` (norm + self-attention), ``layer_1`` (norm + feed-forward)."""

    num_heads: int
    d_kv: int
    d_ff: int
    activation: str
    gated: bool
    eps: float
    relative_bias: bool = False
    num_buckets: int = 32
    max_distance: int = 128
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array | None, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = _AttentionLayer(
            self.num_heads, self.d_kv, self.eps, self.relative_bias, self.num_buckets,
            self.max_distance, name="layer_0", **kw,
        )  # fmt: skip
        x, bias = attn(x, bias, mask)
        ff = _FeedForwardLayer(
            self.d_ff, self.activation, self.gated, self.eps, name="layer_1", **kw
        )
        return ff(x), bias


class _AttentionLayer(nn.Module):
    """x + SelfAttention(layer_norm(x))."""

    num_heads: int
    d_kv: int
    eps: float
    relative_bias: bool
    num_buckets: int
    max_distance: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = RMSNorm(self.eps, name="layer_norm", **kw)(x)
        attn = T5Attention(
            self.num_heads, self.d_kv, self.relative_bias, self.num_buckets, self.max_distance,
            name="SelfAttention", **kw,
        )  # fmt: skip
        y, bias = attn(h, bias, mask)
        return x + y, bias


class _FeedForwardLayer(nn.Module):
    """x + DenseReluDense(layer_norm(x))."""

    d_ff: int
    activation: str
    gated: bool
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = RMSNorm(self.eps, name="layer_norm", **kw)(x)
        ff = _FeedForward(self.d_ff, self.activation, self.gated, name="DenseReluDense", **kw)
        return x + ff(h)


class _FeedForward(nn.Module):
    """``act(wi x)`` -> ``wo`` or, gated, ``act(wi_0 x) * wi_1 x`` -> ``wo``."""

    d_ff: int
    activation: str
    gated: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        act = ACTIVATIONS[self.activation]
        if self.gated:
            wi_0 = nn.Dense(self.d_ff, name="wi_0", **kw)
            h = act(wi_0(x)) * nn.Dense(self.d_ff, name="wi_1", **kw)(x)
        else:
            h = act(nn.Dense(self.d_ff, name="wi", **kw)(x))
        return nn.Dense(x.shape[-1], name="wo", **kw)(h)


class _Stack(nn.Module):
    """``block_0`` ... then ``final_layer_norm``; returns the hidden states as transformers."""

    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    activation: str
    gated: bool
    eps: float
    num_buckets: int
    max_distance: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, ...]:
        hidden, bias = [x], None
        for i in range(self.num_layers):
            block = T5Block(
                self.num_heads, self.d_kv, self.d_ff, self.activation, self.gated, self.eps,
                i == 0, self.num_buckets, self.max_distance, name=f"block_{i}",
                dtype=self.dtype, param_dtype=self.param_dtype,
            )  # fmt: skip
            x, bias = block(x, bias, mask)
            hidden.append(x)
        norm = RMSNorm(self.eps, name="final_layer_norm", dtype=self.dtype,
                       param_dtype=self.param_dtype)  # fmt: skip
        hidden[-1] = norm(x)  # transformers' last hidden state is the normed one
        return tuple(hidden)


class T5EncoderModel(nn.Module):
    """T5 encoder (transformers' ``T5EncoderModel``); field names as its config.

    ``activation`` and ``gated`` are what transformers derives from ``feed_forward_proj``
    ("relu" -> relu, ungated; "gated-gelu" -> gelu_new, gated). ``apply({"params": p},
    input_ids [B, L], attention_mask=None)`` -> `TextEncoderOutput` with ``last_hidden_state``
    and ``hidden_states``. Concrete ``input_ids`` are checked against ``vocab_size`` (under jit
    an out-of-vocabulary id gives NaN rows).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    activation: str = "relu"
    gated: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Any, attention_mask: Any = None) -> TextEncoderOutput:
        name = type(self).__name__
        check_activation(self.activation, name)
        if jnp.ndim(input_ids) != 2:
            raise ValueError(
                f"{name}: input_ids must be [batch, length], got {jnp.shape(input_ids)}."
            )
        check_token_ids(input_ids, self.vocab_size, name)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Embed(self.vocab_size, self.d_model, name="shared", **kw)(jnp.asarray(input_ids))
        hidden = _Stack(
            self.num_layers, self.num_heads, self.d_kv, self.d_ff, self.activation, self.gated,
            self.layer_norm_epsilon, self.relative_attention_num_buckets,
            self.relative_attention_max_distance, name="encoder", **kw,
        )(x, padding_mask(attention_mask))  # fmt: skip
        return TextEncoderOutput(hidden[-1], hidden)
