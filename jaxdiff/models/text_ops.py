"""Layers shared by the transformers-compatible text encoders (`clip`, `t5`).

Numerics follow transformers' PyTorch models; everything that loses digits in bfloat16 (layer
and RMS norms, attention logits and softmax) is computed in float32 whatever ``dtype`` the
matmuls run in.

Attention uses `jax.nn.dot_product_attention` (its XLA path) rather than
`jaxdiff.models.attention.dot_product_attention`: the text encoders need a causal mask, a
padding mask and (T5) an additive per-head position bias without 1/sqrt(d) scaling, none of
which the U-Net op takes, and at 77-512 tokens the materialised [B, H, L, L] scores are small.
JAX's op computes the logits and the softmax in float32 for bfloat16 inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_F32 = jnp.float32


@flax.struct.dataclass
class TextEncoderOutput:
    """What a text encoder returns (a pytree; absent fields are None).

    Attributes:
      last_hidden_state: [B, L, D] output of the final norm.
      hidden_states: the embeddings and the output of every layer, each [B, L, D], so
        ``hidden_states[-2]`` is the penultimate layer ("clip skip"). As in transformers, CLIP's
        last entry is the last layer before the final norm, T5's is ``last_hidden_state``.
      pooled_output: [B, D] (CLIP) ``last_hidden_state`` at the end-of-text token.
      text_embeds: [B, P] (CLIP with projection) ``pooled_output`` projected.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooled_output: jax.Array | None = None
    text_embeds: jax.Array | None = None


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * nn.sigmoid(1.702 * x)


# transformers' ACT2FN names -> functions (gelu_new is the tanh approximation).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": _quick_gelu,
    "silu": nn.silu,
    "swish": nn.silu,
}


def check_activation(name: str, where: str) -> None:
    """Raise ValueError unless ``name`` is one of `ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: activation {name!r} is not one of {sorted(ACTIVATIONS)}.")


def check_token_ids(input_ids: Any, vocab_size: int, where: str) -> None:
    """Raise ValueError when concrete ``input_ids`` are not integers in [0, vocab_size).

    Inside ``jax.jit`` the ids are tracers and cannot be checked; the embedding lookup then
    returns NaN rows for ids outside the vocabulary, so the outputs turn NaN instead of being
    silently clamped.
    """
    try:
        ids = np.asarray(input_ids)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced (jit, eval_shape): nothing to check
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{where}: input_ids must be integers, got dtype {ids.dtype}.")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise ValueError(
            f"{where}: token ids must lie in [0, {vocab_size}) (the model's vocab_size); got "
            f"{np.unique(ids[bad])[:10].tolist()} at {int(bad.sum())} position(s)."
        )


class Embed(nn.Module):
    """Lookup table ``embedding`` [num, features], initialised N(0, ``stddev``^2) (CLIP's
    0.02 by default); ids outside [0, num) give NaN rows."""

    num: int
    features: int
    dtype: Dtype = _F32
    param_dtype: Dtype = _F32
    stddev: float = 0.02

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        init = nn.initializers.normal(self.stddev)
        table = self.param("embedding", init, (self.num, self.features), self.param_dtype)
        ids = jnp.where(ids < 0, self.num, ids)  # negative ids would wrap around, not fill
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (``scale``, ``bias``), statistics in float32."""

    eps: float = 1e-5
    dtype: Dtype = _F32
    param_dtype: Dtype = _F32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        x32 = x.astype(_F32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * scale.astype(_F32) + bias.astype(_F32)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """T5's norm: x / sqrt(mean(x^2) + eps) * ``scale`` (no mean, no bias), in float32."""

    eps: float = 1e-6
    dtype: Dtype = _F32
    param_dtype: Dtype = _F32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(_F32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        return (x32 * jax.lax.rsqrt(var + self.eps) * scale.astype(_F32)).astype(self.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """softmax(scale q k^T + bias) v over the keys that ``mask`` keeps, [B, L, H, D] layout.

    Args:
      q: queries [B, Lq, H, D].
      k: keys [B, Lk, H, D].
      v: values [B, Lk, H, D].
      scale: factor on the logits (1 for T5).
      bias: float32 logit bias broadcastable to [B, H, Lq, Lk].
      mask: boolean, True where a query may attend, broadcastable to [B, H, Lq, Lk].
      is_causal: also hide keys after the query.

    Returns:
      [B, Lq, H, D] in the dtype of v.
    """
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal, implementation="xla"
    )


def padding_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """[B, L] 1 / 0 key mask -> boolean [B, 1, 1, L] (None stays None)."""
    if attention_mask is None:
        return None
    return jnp.asarray(attention_mask).astype(bool)[:, None, None, :]


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B, L, H * D] -> [B, L, H, D]."""
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads)
