"""CLIP in Flax Linen: the text encoders (the text tower of Stable Diffusion 1.x / 2.x and SDXL),
the vision tower (ViT) and the two-tower ``CLIPModel`` (for CLIP score).

Same numerics as transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``: token plus
learned position embeddings, pre-LayerNorm transformer layers under a causal mask (and an
optional padding mask), ``quick_gelu`` / ``gelu`` MLPs, a final LayerNorm, and the pooled output
at the end-of-text token. The vision tower, as transformers' ``CLIPVisionModel``: a bias-free
patch convolution, a class token and learned positions, ``pre_layrnorm``, the same layers
without a mask, and ``post_layernorm`` on the class token. Parameter names mirror transformers'
module names (see `jaxdiff.models.convert_text`, `jaxdiff.models.convert_clip`). Inference
only: no dropout. Images are NHWC.

Pooling follows transformers: a config whose ``eos_token_id`` is 2 (the value in checkpoints
written before the end-of-text id was fixed, e.g. Stable Diffusion 1.x) pools at the largest
id of each row (the end-of-text token has the largest id of CLIP's vocabulary); any other value
pools at the first occurrence of ``eos_token_id`` (position 0 when a row has none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
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
    """Self-attention with biased ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``; causal in
    the text tower, bidirectional in the vision tower."""

    heads: int
    causal: bool = True
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
        scale = (width // self.heads) ** -0.5
        o = attention(q, k, v, scale=scale, mask=mask, is_causal=self.causal)
        return nn.Dense(width, name="out_proj", **kw)(o.reshape(x.shape))


class CLIPEncoderLayer(nn.Module):
    """x + attn(ln1(x)), then + fc2(act(fc1(ln2(x))))."""

    heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    causal: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(self.layer_norm_eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(self.heads, self.causal, name="self_attn", **kw)(h, mask)
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
    causal: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, ...]:
        hidden = [x]
        for i in range(self.num_layers):
            layer = CLIPEncoderLayer(
                self.heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps,
                self.causal, name=f"layers_{i}", dtype=self.dtype, param_dtype=self.param_dtype,
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


@flax.struct.dataclass
class VisionEncoderOutput:
    """What the CLIP vision tower returns (a pytree; absent fields are None).

    Attributes:
      last_hidden_state: [B, 1 + P, D] output of the last layer (class token first; no final
        norm, as in transformers).
      hidden_states: the (pre-normed) embeddings and every layer's output, each [B, 1 + P, D].
      pooled_output: [B, D] the class token after ``post_layernorm``.
      image_embeds: [B, E] (with projection) ``pooled_output`` projected.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooled_output: jax.Array
    image_embeds: jax.Array | None = None


class _VisionEmbeddings(nn.Module):
    """Bias-free patch convolution, a learned class token, learned position embeddings."""

    hidden_size: int
    image_size: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.patch_size
        patches = nn.Conv(
            self.hidden_size, (p, p), (p, p), padding="VALID", use_bias=False,
            name="patch_embedding", **kw,
        )(pixel_values.astype(self.dtype))  # fmt: skip
        b, gh, gw, d = patches.shape
        init = nn.initializers.normal(1.0)
        cls = self.param("class_embedding", init, (d,), self.param_dtype).astype(self.dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), patches.reshape(b, -1, d)], 1)
        num_positions = (self.image_size // p) ** 2 + 1
        positions = Embed(num_positions, d, name="position_embedding", **kw)
        return tokens + positions(jnp.arange(num_positions))[None]


class CLIPVisionModel(nn.Module):
    """CLIP vision transformer (transformers' ``CLIPVisionModel``); field names as its config.

    ``apply({"params": p}, pixel_values)`` with pixel values [B, image_size, image_size, C]
    (NHWC, already normalised by the image processor's mean and std) -> `VisionEncoderOutput`.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check(self, pixel_values: Any) -> None:
        name = type(self).__name__
        check_activation(self.hidden_act, name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}."
            )
        want = (self.image_size, self.image_size, self.num_channels)
        if len(jnp.shape(pixel_values)) != 4 or tuple(jnp.shape(pixel_values)[1:]) != want:
            raise ValueError(
                f"{name}: pixel_values must be [batch, {want[0]}, {want[1]}, {want[2]}] (NHWC, "
                f"image_size {self.image_size}); got shape {tuple(jnp.shape(pixel_values))}."
            )

    @nn.compact
    def __call__(self, pixel_values: Any) -> VisionEncoderOutput:
        self._check(pixel_values)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _VisionEmbeddings(
            self.hidden_size, self.image_size, self.patch_size, name="embeddings", **kw
        )(jnp.asarray(pixel_values))
        x = LayerNorm(self.layer_norm_eps, name="pre_layrnorm", **kw)(x)  # transformers' name
        hidden = _Encoder(
            self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
            self.hidden_act, self.layer_norm_eps, causal=False, name="encoder", **kw,
        )(x, None)  # fmt: skip
        pooled = LayerNorm(self.layer_norm_eps, name="post_layernorm", **kw)(hidden[-1][:, 0])
        return VisionEncoderOutput(hidden[-1], hidden, pooled)


def _fields(module: nn.Module, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    return {k: getattr(module, k) for k in names}


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """`CLIPVisionModel` (under ``vision_model``) plus the bias-free ``visual_projection``.

    The output adds ``image_embeds`` [B, projection_dim].
    """

    projection_dim: int = 512

    @nn.compact
    def __call__(self, pixel_values: Any) -> VisionEncoderOutput:
        fields = _fields(self, CLIPVisionModel)
        out = CLIPVisionModel(**fields, name="vision_model")(pixel_values)
        projection = nn.Dense(
            self.projection_dim, use_bias=False, name="visual_projection",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        return out.replace(image_embeds=projection(out.pooled_output))


class CLIPModel(nn.Module):
    """Both CLIP towers and their projections (transformers' ``CLIPModel``).

    ``apply(v, pixel_values, method="image_embeds")`` -> [B, projection_dim] and
    ``apply(v, input_ids, method="text_embeds")`` -> [B, projection_dim], both unnormalised;
    ``apply(v, pixel_values, input_ids)`` -> (image_embeds, text_embeds). ``logit_scale`` is
    loaded but unused here (CLIP score does not use it).

    Attributes:
      text_config: the `CLIPTextModel` of the text tower (its fields; it is built here).
      vision_config: the `CLIPVisionModel` of the vision tower.
      projection_dim: width of the joint embedding.
    """

    text_config: CLIPTextModel = dataclasses.field(default_factory=CLIPTextModel)
    vision_config: CLIPVisionModel = dataclasses.field(default_factory=CLIPVisionModel)
    projection_dim: int = 512

    def setup(self) -> None:
        self.text_model = CLIPTextModel(**_fields(self.text_config, CLIPTextModel))
        self.vision_model = CLIPVisionModel(**_fields(self.vision_config, CLIPVisionModel))
        t, v = self.text_model, self.vision_model
        self.visual_projection = nn.Dense(self.projection_dim, use_bias=False, dtype=v.dtype,
                                          param_dtype=v.param_dtype)  # fmt: skip
        self.text_projection = nn.Dense(self.projection_dim, use_bias=False, dtype=t.dtype,
                                        param_dtype=t.param_dtype)  # fmt: skip
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

    def image_embeds(self, pixel_values: Any) -> jax.Array:
        """Projected image embeddings [B, projection_dim] (``get_image_features``)."""
        return self.visual_projection(self.vision_model(pixel_values).pooled_output)

    def text_embeds(self, input_ids: Any, attention_mask: Any = None) -> jax.Array:
        """Projected text embeddings [B, projection_dim] (``get_text_features``)."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooled_output)

    def __call__(self, pixel_values: Any, input_ids: Any) -> tuple[jax.Array, jax.Array]:
        return self.image_embeds(pixel_values), self.text_embeds(input_ids)
