"""Multi-head attention: one interface, two numerically equivalent implementations.

* ``"xla"``: `jax.nn.dot_product_attention` (fused kernels on GPU / TPU; on CPU it materialises
  the softmax).
* ``"flash"``: a memory-efficient formulation with a custom VJP. The forward keeps only the
  output and the per-row log-sum-exp; the backward recomputes the probabilities in transposed
  form (K Q^T), so the dK / dV products keep a layout XLA maps onto its fast matmul. Batch x
  heads are processed in chunks of about 4 MB of scores. This is several times faster than the
  materialised softmax on CPU, fwd + bwd.
* ``"cudnn"``: `jax.nn.dot_product_attention` forced onto cuDNN's fused kernel (NVIDIA GPUs
  only; bf16 / fp16 inputs).
* ``"auto"``: ``"flash"`` on CPU, ``"xla"`` elsewhere.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import GroupNorm
from jaxdiff.models.ops import Conv, Dense

Dtype = Any

IMPLEMENTATIONS = ("auto", "xla", "flash", "cudnn")
_CHUNK_BYTES = 4 * 2**20


def check_implementation(implementation: str) -> None:
    """Raise ValueError unless ``implementation`` is one of `IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}."
        )


def _chunk(n: int, lq: int, lk: int) -> int:
    """Largest divisor of n whose [chunk, lq, lk] float32 score block fits in _CHUNK_BYTES."""
    cap = max(1, _CHUNK_BYTES // (4 * lq * lk))
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _map_chunks(fn, chunk: int, *arrays):
    """Apply fn to consecutive leading-axis chunks of arrays (one call when it is all one)."""
    n = arrays[0].shape[0]
    if chunk >= n:
        return fn(*arrays)
    split = [a.reshape(n // chunk, chunk, *a.shape[1:]) for a in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), split)
    return jax.tree.map(lambda o: o.reshape(n, *o.shape[2:]), out)


def _fwd_block(q, k, v):
    s = jnp.einsum("nqd,nkd->nqk", q, k, preferred_element_type=jnp.float32)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("nqk,nkd->nqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    o = (o / denom).astype(q.dtype)
    return o, (m + jnp.log(denom))[..., 0]


def _bwd_block(q, k, v, lse, do, delta):
    s_t = jnp.einsum("nkd,nqd->nkq", k, q, preferred_element_type=jnp.float32)
    p_t = jnp.exp(s_t - lse[:, None, :])
    dv = jnp.einsum("nkq,nqd->nkd", p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp_t = jnp.einsum("nkd,nqd->nkq", v, do, preferred_element_type=jnp.float32)
    ds_t = (p_t * (dp_t - delta[:, None, :])).astype(q.dtype)
    dk = jnp.einsum("nkq,nqd->nkd", ds_t, q, preferred_element_type=jnp.float32)
    dq = jnp.einsum("nkq,nkd->nqd", ds_t, k, preferred_element_type=jnp.float32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@jax.custom_vjp
def _flash(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v over [N, L, D] inputs (q already scaled)."""
    return _flash_fwd(q, k, v)[0]


def _flash_fwd(q, k, v):
    chunk = _chunk(q.shape[0], q.shape[1], k.shape[1])
    o, lse = _map_chunks(_fwd_block, chunk, q, k, v)
    return o, (q, k, v, o, lse)


def _flash_bwd(res, do):
    q, k, v, o, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [N, Lq]
    chunk = _chunk(q.shape[0], q.shape[1], k.shape[1])
    return _map_chunks(_bwd_block, chunk, q, k, v, lse, do, delta)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Memory-efficient attention with a recomputing custom VJP.

    Args:
      q: queries [B, Lq, H, D].
      k: keys [B, Lk, H, D].
      v: values [B, Lk, H, D].

    Returns:
      softmax(q k^T / sqrt(D)) v, [B, Lq, H, D].
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q = q * jnp.asarray(d**-0.5, q.dtype)  # scale q, never the [Lq, Lk] scores

    def heads_first(x, length):
        return x.transpose(0, 2, 1, 3).reshape(b * h, length, d)

    o = _flash(heads_first(q, lq), heads_first(k, lk), heads_first(v, lk))
    return o.reshape(b, h, lq, d).transpose(0, 2, 1, 3)


def resolve(implementation: str) -> str:
    """Map "auto" to the implementation that is fastest on the default backend."""
    check_implementation(implementation)
    if implementation == "auto":
        return "flash" if jax.default_backend() == "cpu" else "xla"
    return implementation


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto"
) -> jax.Array:
    """Scaled dot-product attention, [B, L, H, D] layout (as `jax.nn.dot_product_attention`).

    Args:
      q: queries [B, Lq, H, D].
      k: keys [B, Lk, H, D].
      v: values [B, Lk, H, D].
      implementation: "auto", "xla", "flash" or "cudnn" (see the module docstring).

    Returns:
      Attention output [B, Lq, H, D].
    """
    implementation = resolve(implementation)
    if implementation == "flash":
        return flash_attention(q, k, v)
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v)


def multi_head_attention(
    x: jax.Array,
    context: jax.Array | None,
    *,
    heads: int,
    qkv_bias: bool,
    implementation: str,
    dtype: Dtype,
    param_dtype: Dtype,
) -> jax.Array:
    """Attention from x [B, Lq, C] to context [B, Lk, Dc] (x itself when None).

    Must be called inside a compact method: it creates the Dense layers ``to_q``, ``to_k``,
    ``to_v`` and ``to_out_0`` in the calling module (diffusers' flat parameter layout).
    """
    b, lq, c = x.shape
    if c % heads:
        raise ValueError(f"attention: {c} channels are not divisible into {heads} heads.")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    src = x if context is None else context
    q = Dense(c, use_bias=qkv_bias, name="to_q", **kw)(x)
    k = Dense(c, use_bias=qkv_bias, name="to_k", **kw)(src)
    v = Dense(c, use_bias=qkv_bias, name="to_v", **kw)(src)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, c // heads)

    o = dot_product_attention(split(q), split(k), split(v), implementation=implementation)
    return Dense(c, name="to_out_0", **kw)(o.reshape(b, lq, c))


class SpatialSelfAttention(nn.Module):
    """Self-attention over the pixels of [B, H, W, C] with a residual connection.

    out = (x + attn(group_norm(x))) / ``output_scale``: the attention block of DDPM / ADM and of
    diffusers' UNet2DModel (``norm`` False drops the group norm, as diffusers' mid-block does
    for scale-shift models without ``attn_norm_num_groups``).
    """

    heads: int
    groups: int = 32
    eps: float = 1e-5
    norm: bool = True
    output_scale: float = 1.0
    dropout: float = 0.0
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        y = x
        if self.norm:
            y = GroupNorm(self.groups, self.eps, self.param_dtype, name="group_norm")(x)
        y = multi_head_attention(
            y.reshape(b, h * w, c), None, heads=self.heads, qkv_bias=True,
            implementation=self.implementation, dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        out = x + y.reshape(b, h, w, c)
        return out if self.output_scale == 1.0 else out / self.output_scale


class CrossAttention(nn.Module):
    """Bias-free-projection attention of a transformer block (``attn1`` / ``attn2``)."""

    heads: int
    dropout: float = 0.0
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None, train: bool) -> jax.Array:
        y = multi_head_attention(
            x, context, heads=self.heads, qkv_bias=False, implementation=self.implementation,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class GEGLU(nn.Module):
    """value * GELU(gate) of one linear projection ``proj`` to 2 x ``features``."""

    features: int
    approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Dense(2 * self.features, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)
        value, gate = jnp.split(h(x), 2, axis=-1)
        return value * nn.gelu(gate, approximate=self.approximate)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, GEGLU feed-forward.

    LayerNorms ``norm1`` .. ``norm3``, attentions ``attn1`` (self) and ``attn2`` (to the
    context, or self-attention again when the context is None), feed-forward ``ff``.
    """

    heads: int
    dropout: float = 0.0
    ln_eps: float = 1e-5
    gelu_approximate: bool = False
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = functools.partial(
            CrossAttention, self.heads, self.dropout, self.implementation, **kw
        )

        def norm(name):
            return nn.LayerNorm(self.ln_eps, name=name, **kw)

        x = x + attn(name="attn1")(norm("norm1")(x), None, train)
        x = x + attn(name="attn2")(norm("norm2")(x), context, train)
        ff = FeedForward(4, self.dropout, self.gelu_approximate, name="ff", **kw)
        return x + ff(norm("norm3")(x), train)


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``net_0`` (GEGLU to mult x C), dropout, ``net_2`` (back to C)."""

    mult: int = 4
    dropout: float = 0.0
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GEGLU(self.mult * c, self.gelu_approximate, name="net_0", **kw)(x)
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return Dense(c, name="net_2", **kw)(h)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of [B, H, W, C] (diffusers' Transformer2DModel).

    x + proj_out(blocks(proj_in(group_norm(x)))), the projections 1x1 convolutions or (with
    ``linear_projection``) linear layers.
    """

    heads: int
    depth: int = 1
    groups: int = 32
    eps: float = 1e-6
    linear_projection: bool = False
    dropout: float = 0.0
    gelu_approximate: bool = False
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None, train: bool = False):
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def proj(name):
            if self.linear_projection:
                return Dense(c, name=name, **kw)
            return Conv(c, 1, padding=((0, 0), (0, 0)), name=name, **kw)

        y = GroupNorm(self.groups, self.eps, self.param_dtype, name="norm")(x)
        y = proj("proj_in")(y).reshape(b, h * w, c)
        for i in range(self.depth):
            block = TransformerBlock(
                self.heads, self.dropout, gelu_approximate=self.gelu_approximate,
                implementation=self.implementation, name=f"transformer_blocks_{i}", **kw,
            )  # fmt: skip
            y = block(y, context, train)
        return x + proj("proj_out")(y.reshape(b, h, w, c))
