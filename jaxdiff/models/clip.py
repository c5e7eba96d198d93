"""CLIP text encoders (the text tower of Stable Diffusion 1.x / 2.x and SDXL) in Flax Linen.

Same numerics as transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``: token plus
learned position embeddings, pre-LayerNorm transformer layers under a causal mask (and an
optional padding mask), ``quick_gelu`` / ``gelu`` MLPs, a final LayerNorm, and the pooled output
at the end-of-text token. Parameter names mirror transformers' module names (see
`jaxdiff.models.convert_text`). Inference only: no dropout.

Pooling follows transformers: a config whose ``eos_token_id`` is 2 (the value in checkpoints
written before the end-of-text id was fixed, e.g. Stable Diffusion 1.x) pools at the largest
id of each row (the end-of-text token has the largest id of CLIP's vocabulary); any other value
pools at the first occurrence of ``eos_token_id`` (position 0 when a row has none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.text_ops import (
    ACTIVATIONS,
    Embed,
    LayerNorm,
    TextEncoderOutput,
    attention,
    check_activation,
    check_token_ids,
    padding_mask,
    split_heads,
)

Dtype = Any
_LEGACY_EOS = 2


class CLIPAttention(nn.Module):
    """Self-attention with biased ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``."""

    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        width = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q, k, v = (
            split_heads(nn.Dense(width, name=n, **kw)(x), self.heads)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        o = attention(q, k, v, scale=(width // self.heads) ** -0.5, mask=mask, is_causal=True)
        return nn.Dense(width, name="out_proj", **kw)(o.reshape(x.shape))


class CLIPEncoderLayer(nn.Module):
    """x + attn(ln1(x)), then + fc2(act(fc1(ln2(x))))."""

    heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(self.layer_norm_eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(self.heads, name="self_attn", **kw)(h, mask)
        h = LayerNorm(self.layer_norm_eps, name="layer_norm2", **kw)(x)
        mlp = _MLP(self.intermediate_size, self.hidden_act, name="mlp", **kw)
        return x + mlp(h)


class _MLP(nn.Module):
    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(self.intermediate_size, name="fc1", **kw)(x)
        return nn.Dense(x.shape[-1], name="fc2", **kw)(ACTIVATIONS[self.hidden_act](h))


class _Encoder(nn.Module):
    """``layers_0`` ... : returns the input and every layer's output."""

    num_layers: int
    heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, ...]:
        hidden = [x]
        for i in range(self.num_layers):
            layer = CLIPEncoderLayer(
                self.heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps,
                name=f"layers_{i}", dtype=self.dtype, param_dtype=self.param_dtype,
            )  # fmt: skip
            hidden.append(layer(hidden[-1], mask))
        return tuple(hidden)


class _Embeddings(nn.Module):
    vocab_size: int
    max_position_embeddings: int
    hidden_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = Embed(self.vocab_size, self.hidden_size, name="token_embedding", **kw)
        positions = Embed(
            self.max_position_embeddings, self.hidden_size, name="position_embedding", **kw
        )
        return tokens(input_ids) + positions(jnp.arange(input_ids.shape[-1]))[None]


class CLIPTextModel(nn.Module):
    """CLIP text transformer (transformers' ``CLIPTextModel``); field names as its config.

    ``apply({"params": p}, input_ids [B, L], attention_mask=None)`` -> `TextEncoderOutput`
    with ``last_hidden_state``, ``hidden_states`` and ``pooled_output``. Concrete ``input_ids``
    are checked against ``vocab_size`` (under jit an out-of-vocabulary id gives NaN rows).
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check(self, input_ids: Any) -> None:
        name = type(self).__name__
        check_activation(self.hidden_act, name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}."
            )
        shape = jnp.shape(input_ids)
        if len(shape) != 2 or shape[1] > self.max_position_embeddings:
            raise ValueError(
                f"{name}: input_ids must be [batch, length] with length <= "
                f"max_position_embeddings {self.max_position_embeddings}; got shape "
                f"{tuple(shape)}."
            )
        check_token_ids(input_ids, self.vocab_size, name)

    @nn.compact
    def __call__(self, input_ids: Any, attention_mask: Any = None) -> TextEncoderOutput:
        self._check(input_ids)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        input_ids = jnp.asarray(input_ids)
        x = _Embeddings(
            self.vocab_size, self.max_position_embeddings, self.hidden_size,
            name="embeddings", **kw,
        )(input_ids)  # fmt: skip
        hidden = _Encoder(
            self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
            self.hidden_act, self.layer_norm_eps, name="encoder", **kw,
        )(x, padding_mask(attention_mask))  # fmt: skip
        x = hidden[-1]
        last = LayerNorm(self.layer_norm_eps, name="final_layer_norm", **kw)(x)
        if self.eos_token_id == _LEGACY_EOS:
            where = jnp.argmax(input_ids, axis=-1)
        else:
            where = jnp.argmax(input_ids == self.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, where[:, None, None], axis=1)[:, 0]
        return TextEncoderOutput(last, hidden, pooled)


class CLIPTextModelWithProjection(CLIPTextModel):
    """`CLIPTextModel` (under ``text_model``) plus the bias-free ``text_projection``.

    SDXL's second text encoder. The output adds ``text_embeds`` [B, projection_dim].
    """

    projection_dim: int = 512

    @nn.compact
    def __call__(self, input_ids: Any, attention_mask: Any = None) -> TextEncoderOutput:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(CLIPTextModel)}
        fields = {k: v for k, v in fields.items() if k not in ("parent", "name")}
        out = CLIPTextModel(**fields, name="text_model")(input_ids, attention_mask)
        projection = nn.Dense(
            self.projection_dim, use_bias=False, name="text_projection",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        return out.replace(text_embeds=projection(out.pooled_output))
