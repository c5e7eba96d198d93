"""U-Net layers, presets and configuration checks (numbers against closed forms / diffusers)."""

import functools
import json
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import ADM_IMAGENET64, DDPM_CIFAR10, DIGITS, TINY
from jaxdiff.models.blocks import BlockSpec
from jaxdiff.models.layers import group_norm, timestep_embedding, upsample_nearest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "unet")
sys.path.insert(0, FIXTURES)
from random_weights import random_params  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # these tests check numbers, not speed


def _shapes(module, x, labels=None, context=None):
    t = jnp.zeros(x.shape[:1])
    return jax.eval_shape(
        lambda: module.init(jax.random.key(0), x, t, labels=labels, context=context)
    )["params"]


@functools.cache
def _preset_shapes(name):
    """Parameter shapes of a preset at its native input (ADM's 296M traced once)."""
    preset, shape = {"DDPM_CIFAR10": (DDPM_CIFAR10, (1, 32, 32, 3)),
                     "ADM_IMAGENET64": (ADM_IMAGENET64, (1, 64, 64, 3))}[name]  # fmt: skip
    model = preset()
    labels = jnp.zeros(1, jnp.int32) if model.num_classes else None
    return _shapes(model, jnp.zeros(shape), labels)


def _count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def test_param_counts_match_diffusers_and_papers():
    with open(os.path.join(FIXTURES, "param_counts.json")) as f:
        reference = json.load(f)  # diffusers' counts of the same architectures
    ddpm = _count(_preset_shapes("DDPM_CIFAR10"))
    adm = _count(_preset_shapes("ADM_IMAGENET64"))
    assert ddpm == reference["DDPM_CIFAR10"]
    assert round(ddpm / 1e6, 1) == 35.7  # Ho et al. 2020
    assert adm == reference["ADM_IMAGENET64"]


@pytest.mark.parametrize(
    "name, shape, out_channels",
    [("DDPM_CIFAR10", (2, 32, 32, 3), 3), ("ADM_IMAGENET64", (2, 64, 64, 3), 6),
     ("DIGITS", (2, 8, 8, 1), 1), ("TINY", (2, 8, 8, 3), 3)],
)  # fmt: skip
def test_preset_shapes(name, shape, out_channels):
    model = {"DDPM_CIFAR10": DDPM_CIFAR10, "ADM_IMAGENET64": ADM_IMAGENET64, "DIGITS": DIGITS,
             "TINY": TINY}[name]()  # fmt: skip
    labels = None if model.num_classes is None else jnp.zeros(shape[:1], jnp.int32)
    if name in ("DDPM_CIFAR10", "ADM_IMAGENET64"):
        params = _preset_shapes(name)  # parameter shapes do not depend on the batch
    else:
        params = _shapes(model, jnp.zeros(shape), labels)
    out = jax.eval_shape(
        lambda p: model.apply({"params": p}, jnp.zeros(shape), jnp.ones(shape[:1]), labels),
        params,
    )
    assert out.shape == shape[:3] + (out_channels,) and out.dtype == jnp.float32
    if model.num_classes is not None:  # one row per class plus the null class
        assert params["class_embedding"]["embedding"].shape[0] == model.num_classes + 1


def test_digits_preset_size():
    n = _count(_shapes(DIGITS(), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1, jnp.int32)))
    assert 0.3e6 <= n <= 1.5e6 and DIGITS().num_classes == 10


@pytest.fixture(scope="module")
def tiny():
    # One level (no resampling) keeps compilation short; the presets' full structure is
    # exercised by the parity tests against diffusers.
    model = TINY(channels=(8,), attention_levels=(0,), dropout=0.5)
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 3))
    params = random_params(_shapes(model, x, jnp.zeros(3, jnp.int32)), seed=0)
    apply = jax.jit(model.apply, static_argnames="train", compiler_options=FAST_COMPILE)
    return model, params, x, apply


def test_labels_none_is_the_null_class(tiny):
    model, params, x, apply = tiny
    t = jnp.array([0.0, 250.5, 999.0])
    null = apply({"params": params}, x, t, jnp.full(3, model.num_classes))
    np.testing.assert_array_equal(apply({"params": params}, x, t, None), null)
    other = apply({"params": params}, x, t, jnp.array([0, 1, 2]))
    assert np.abs(np.asarray(other - null)).max() > 1e-3  # labels reach the output


def test_dropout_is_keyed_and_off_at_eval(tiny):
    model, params, x, apply = tiny
    t, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 1, 2])
    run = lambda seed: apply({"params": params}, x, t, y, train=True,
                             rngs={"dropout": jax.random.key(seed)})  # fmt: skip
    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(np.asarray(run(0) - run(1))).max() > 1e-3
    eval_out = apply({"params": params}, x, t, y)
    assert np.abs(np.asarray(run(0) - eval_out)).max() > 1e-3


def test_compute_dtype_and_param_dtype_are_separate(tiny):
    model, params, x, apply = tiny
    t, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 1, 2])
    ref = apply({"params": params}, x, t, y)
    bf16 = model.clone(dtype=jnp.bfloat16)
    out = jax.jit(bf16.apply, compiler_options=FAST_COMPILE)({"params": params}, x, t, y)
    assert out.dtype == jnp.float32
    err = float(jnp.abs(out - ref).max() / jnp.std(ref))
    assert err < 0.1, err  # bf16 compute, float32 parameters
    shapes = _shapes(TINY(param_dtype=jnp.bfloat16), x, jnp.zeros(3, jnp.int32))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}


class _Block(nn.Module):
    """One ResBlock + one attention block built by BlockSpec (where remat is applied)."""

    spec: BlockSpec

    @nn.compact
    def __call__(self, x, emb, context):
        h = self.spec.res(8, "res", resample="down")(x, emb, True)
        return self.spec.attend(h, context, True, heads=2, depth=1, name="attn")


@pytest.mark.parametrize("kind", ["self", "transformer"])
def test_remat_gives_the_same_gradients(kind):
    spec = dict(groups=4, eps=1e-5, dropout=0.0, scale_shift=True, resample="conv",
                downsample_padding=1, attention_type=kind, transformer_eps=1e-6,
                linear_projection=False, gelu_approximate=False, implementation="flash",
                dtype=jnp.float32, param_dtype=jnp.float32)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    emb = jax.random.normal(jax.random.key(1), (2, 16))
    context = jax.random.normal(jax.random.key(2), (2, 3, 8)) if kind == "transformer" else None
    plain, remat = _Block(BlockSpec(**spec, remat=False)), _Block(BlockSpec(**spec, remat=True))
    shapes = jax.eval_shape(plain.init, jax.random.key(0), x, emb, context)["params"]
    params = random_params(shapes, seed=1)

    def grad(model):
        f = lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x, emb, context)))
        return jax.jit(jax.grad(f, argnums=(0, 1)), compiler_options=FAST_COMPILE)(params, x)

    a, b = jax.tree.leaves(grad(plain)), jax.tree.leaves(grad(remat))
    assert len(a) == len(b) == len(jax.tree.leaves(params)) + 1
    scale = max(float(np.abs(u).max()) for u in a)  # some biases feed a norm: gradient ~ 0
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * scale)


def test_timestep_embedding_closed_form():
    t = np.array([0.0, 1.5, 999.0])
    for flip, shift in [(False, 1), (True, 0)]:
        half = 5
        freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - shift))
        args = t[:, None] * freqs[None]
        ref = np.concatenate([np.cos(args), np.sin(args)] if flip else
                             [np.sin(args), np.cos(args)], axis=1)  # fmt: skip
        ref = np.pad(ref, ((0, 0), (0, 1)))  # odd width: zero column
        out = timestep_embedding(jnp.asarray(t), 11, flip_sin_to_cos=flip, freq_shift=shift)
        np.testing.assert_allclose(out, ref, atol=2e-4)


def test_group_norm_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 8)) * 3.0 + 2.0
    scale, bias = rng.standard_normal(8), rng.standard_normal(8)
    g = x.reshape(2, 15, 4, 2)
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    ref = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
    out = group_norm(jnp.asarray(x, jnp.float32), jnp.asarray(scale), jnp.asarray(bias),
                     groups=4, eps=1e-5)  # fmt: skip
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_upsample_nearest_repeats_pixels():
    x = jnp.arange(2 * 2 * 3 * 2.0).reshape(2, 2, 3, 2)
    ref = np.repeat(np.repeat(np.asarray(x), 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(upsample_nearest(x), ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(attention_levels=(5,)), "attention_levels"),
     (dict(num_heads=3), "not divisible into 3 heads"),
     (dict(num_heads=2, head_dim=8), "not both"),
     (dict(norm_groups=5), "norm_groups"),
     (dict(resample="pixelshuffle"), "resample"),
     (dict(attention_type="linear"), "attention_type"),
     (dict(context_dim=8), "context_dim needs"),
     (dict(num_res_blocks=(1, 2, 3)), "num_res_blocks"),
     (dict(downsample_padding=2), "downsample_padding")],
)  # fmt: skip
def test_invalid_configurations_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TINY(**kwargs)


def test_invalid_inputs_are_refused():
    model = TINY()
    x, t = jnp.zeros((1, 8, 8, 3)), jnp.zeros(1)
    with pytest.raises(ValueError, match="multiples of 2"):
        _shapes(model, jnp.zeros((1, 7, 8, 3)))
    with pytest.raises(ValueError, match="context was given"):
        _shapes(model, x, context=jnp.zeros((1, 2, 4)))
    cross = TINY(attention_type="transformer", context_dim=4)
    with pytest.raises(ValueError, match=r"context must be \[B, L, 4\]"):
        _shapes(cross, x)
    unconditional = TINY(num_classes=None)
    params = _shapes(unconditional, x)
    with pytest.raises(ValueError, match="num_classes=None"):
        jax.eval_shape(
            lambda p: unconditional.apply({"params": p}, x, t, jnp.zeros(1, int)), params
        )


def test_zero_classes_means_unconditional():
    params = _shapes(TINY(num_classes=0), jnp.zeros((1, 8, 8, 3)))
    assert "class_embedding" not in params
    assert "class_embedding" in _shapes(TINY(), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=">= 0 or None"):
        TINY(num_classes=-1)


def test_group_norm_gradient_matches_autodiff_of_the_definition():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 8)) * 3.0 + 2.0
    scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1.0, 1.0, 8)
    ct = jax.random.normal(jax.random.key(1), x.shape)

    def definition(x, scale, bias):
        g = x.reshape(2, 15, 4, 2)
        mean = g.mean((1, 3), keepdims=True)
        var = ((g - mean) ** 2).mean((1, 3), keepdims=True)
        return ((g - mean) / jnp.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias

    fast = lambda x, s, b: group_norm(x, s, b, groups=4, eps=1e-5)
    got = jax.vjp(fast, x, scale, bias)[1](ct)
    ref = jax.vjp(definition, x, scale, bias)[1](ct)
    for name, a, b in zip(["dx", "dscale", "dbias"], got, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.abs(b).max()), err_msg=name)


def test_group_norm_is_accurate_when_the_mean_dwarfs_the_spread():
    # |mean| / std = 500: E[x^2] - E[x]^2 in float32 would lose ~3 of 7 digits of the variance.
    rng = np.random.default_rng(3)
    x = (5.0 + 0.01 * rng.standard_normal((2, 4, 4, 8))).astype(np.float32)
    scale, bias = np.linspace(0.5, 1.5, 8), np.linspace(-1.0, 1.0, 8)
    dy = rng.standard_normal(x.shape)
    g = x.astype(np.float64).reshape(2, 16, 4, 2)
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    r = 1 / np.sqrt(var + 1e-5)
    xhat = (g - mean) * r
    ref_y = xhat.reshape(x.shape) * scale + bias
    gdy = (dy * scale).reshape(g.shape)  # dL/dxhat
    ref_dx = r * (
        gdy - gdy.mean((1, 3), keepdims=True) - xhat * (gdy * xhat).mean((1, 3), keepdims=True)
    )
    ref_dscale = (dy * xhat.reshape(x.shape)).sum((0, 1, 2))
    fast = lambda x, s, b: group_norm(x, s, b, groups=4, eps=1e-5)
    y, vjp = jax.vjp(
        fast, jnp.asarray(x), jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    )
    dx, dscale, _ = vjp(jnp.asarray(dy, jnp.float32))
    np.testing.assert_allclose(y, ref_y, atol=2e-4)
    np.testing.assert_allclose(dx, ref_dx.reshape(x.shape), atol=2e-4 * np.abs(ref_dx).max())
    np.testing.assert_allclose(dscale, ref_dscale, atol=2e-4 * np.abs(ref_dscale).max())
