"""Attention implementations against a float64 numpy softmax and against each other."""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from jaxdiff.models import TINY
from jaxdiff.models import attention as attention_lib
from jaxdiff.models.attention import dot_product_attention as attention
from jaxdiff.models.attention import resolve
from jaxdiff.models.blocks import BlockSpec

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "unet"))
from random_weights import random_params  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # these tests check numbers, not speed


def _reference(q, k, v):
    """softmax(q k^T / sqrt(d)) v in float64, [B, L, H, D] layout."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _inputs(b, lq, lk, h, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, lq, h, d)) * 2.0
    k = jax.random.normal(ks[1], (b, lk, h, d))
    v = jax.random.normal(ks[2], (b, lk, h, d))
    do = jax.random.normal(ks[3], (b, lq, h, d))
    return q, k, v, do


@pytest.mark.parametrize("shape", [(2, 16, 16, 2, 8), (3, 37, 5, 1, 4)])
@pytest.mark.parametrize("impl", ["flash", "xla"])
def test_attention_matches_float64_reference(shape, impl):
    q, k, v, _ = _inputs(*shape)
    out = jax.jit(lambda q, k, v: attention(q, k, v, implementation=impl))(q, k, v)
    np.testing.assert_allclose(out, _reference(q, k, v), atol=2e-5, rtol=1e-5)


def _grads(impl, q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, implementation=impl), q, k, v)
    return (out, *vjp(do))


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 16 * 24])  # one block / many lax.map chunks
def test_flash_gradients_match_xla(monkeypatch, chunk_bytes):
    if chunk_bytes:
        monkeypatch.setattr(attention_lib, "_CHUNK_BYTES", chunk_bytes)
    q, k, v, do = _inputs(3, 16, 24, 2, 8, seed=1)  # cross-attention lengths
    flash = jax.jit(lambda *a: _grads("flash", *a), compiler_options=FAST_COMPILE)(q, k, v, do)
    xla = jax.jit(lambda *a: _grads("xla", *a), compiler_options=FAST_COMPILE)(q, k, v, do)
    for name, a, b in zip(["out", "dq", "dk", "dv"], flash, xla, strict=True):
        np.testing.assert_allclose(a, b, atol=3e-5, rtol=1e-4, err_msg=name)


def test_flash_gradient_matches_finite_differences():
    q, k, v, do = _inputs(1, 5, 7, 1, 4, seed=2)
    f = lambda q, k, v: jnp.sum(attention(q, k, v, implementation="flash") * do)
    jax.test_util.check_grads(f, (q, k, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


class _Attend(nn.Module):
    """The attention block of a U-Net level, as the U-Net builds it (BlockSpec.attend)."""

    spec: BlockSpec

    @nn.compact
    def __call__(self, x, context):
        return self.spec.attend(x, context, False, heads=2, depth=1, name="attn")


@pytest.mark.parametrize("kind", ["self", "transformer"])
def test_unet_attention_blocks_agree_across_implementations(kind):
    spec = dict(groups=4, eps=1e-5, dropout=0.0, scale_shift=False, resample="conv",
                downsample_padding=1, attention_type=kind, transformer_eps=1e-6,
                linear_projection=True, gelu_approximate=False, remat=False,
                dtype=jnp.float32, param_dtype=jnp.float32)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 8))
    context = jax.random.normal(jax.random.key(1), (2, 3, 5)) if kind == "transformer" else None
    flash = _Attend(BlockSpec(**spec, implementation="flash"))
    xla = _Attend(BlockSpec(**spec, implementation="xla"))
    params = random_params(jax.eval_shape(flash.init, jax.random.key(0), x, context)["params"], 0)

    def value_and_grad(model):
        f = lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x, context)))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)), compiler_options=FAST_COMPILE)(
            params, x
        )

    (vf, gf), (vx, gx) = value_and_grad(flash), value_and_grad(xla)
    np.testing.assert_allclose(vf, vx, rtol=1e-5)
    a, b = jax.tree.leaves(gf), jax.tree.leaves(gx)
    scale = max(float(np.abs(u).max()) for u in b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * scale)


def test_resolve_and_errors():
    assert resolve("flash") == "flash" and resolve("xla") == "xla"
    assert resolve("auto") == ("flash" if jax.default_backend() == "cpu" else "xla")
    assert resolve("cudnn") == "cudnn"  # GPU only: jax.nn.dot_product_attention's cuDNN kernel
    with pytest.raises(ValueError, match="not one of"):
        resolve("fused")
    with pytest.raises(ValueError, match="attention_impl|not one of"):
        TINY(attention_impl="fast")
