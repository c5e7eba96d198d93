"""Classifier-free guidance against its closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import classifier_free_guidance
from jaxdiff.guidance import rescale_guidance

CALLS = []


def model(x, t, labels):
    CALLS.append(x.shape[0])
    return x * 0.5 + labels[:, None].astype(jnp.float32) + 0.001 * t[:, None]


def test_one_batched_call_and_the_guidance_formula():
    x = jnp.arange(6.0).reshape(3, 2)
    t = jnp.array([1.0, 2.0, 3.0])
    labels, null = jnp.array([1, 2, 3]), jnp.full((3,), 10)
    CALLS.clear()
    guided = classifier_free_guidance(model, uncond={"labels": null}, guidance_scale=3.0)
    out = guided(x, t, labels=labels)
    assert CALLS == [6]
    c, u = model(x, t, labels), model(x, t, null)
    np.testing.assert_allclose(out, u + 3.0 * (c - u), rtol=1e-6)
    # w = 1 is the conditional model, w = 0 the unconditional one.
    np.testing.assert_allclose(guided(x, t, labels=labels, guidance_scale=1.0), c, rtol=1e-6)
    np.testing.assert_allclose(guided(x, t, labels=labels, guidance_scale=0.0), u, rtol=1e-6)


def test_per_sample_scale_and_negative_condition():
    x = jnp.ones((2, 3))
    t = jnp.zeros((2,))
    w = jnp.array([0.0, 2.0])
    neg = jnp.array([5, 5])
    guided = classifier_free_guidance(model, uncond={"labels": neg}, guidance_scale=w)
    out = guided(x, t, labels=jnp.array([1, 1]))
    c, u = model(x, t, jnp.array([1, 1])), model(x, t, neg)
    np.testing.assert_allclose(out[0], u[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], u[1] + 2.0 * (c[1] - u[1]), rtol=1e-6)


def test_guidance_rescale_matches_lin_et_al():
    key = jax.random.key(0)
    g = jax.random.normal(key, (2, 4, 4, 3)) * 3.0
    c = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    out = rescale_guidance(g, c, 0.7)
    gn, cn = np.asarray(g, np.float64), np.asarray(c, np.float64)
    sg = gn.reshape(2, -1).std(axis=1, ddof=1)[:, None, None, None]
    sc = cn.reshape(2, -1).std(axis=1, ddof=1)[:, None, None, None]
    np.testing.assert_allclose(out, 0.7 * gn * sc / sg + 0.3 * gn, rtol=1e-5)
    full = np.asarray(rescale_guidance(g, c, 1.0))
    np.testing.assert_allclose(
        full.reshape(2, -1).std(axis=1), cn.reshape(2, -1).std(axis=1), rtol=1e-5
    )


def test_learned_variance_guides_only_the_mean():
    def mv(x, t, labels):
        mean = x + labels[:, None].astype(jnp.float32)
        return jnp.concatenate([mean, mean * 0 + labels[:, None] * 0.1], axis=-1)

    guided = classifier_free_guidance(
        mv, uncond={"labels": jnp.array([0])}, guidance_scale=2.0, learned_variance=True
    )
    out = guided(jnp.zeros((1, 2)), jnp.zeros((1,)), labels=jnp.array([3]))
    np.testing.assert_allclose(out, [[6.0, 6.0, 0.3, 0.3]], rtol=1e-6)


def test_mismatched_conditions():
    guided = classifier_free_guidance(model, uncond={"context": jnp.zeros((1, 2))})
    with pytest.raises(ValueError, match="same keys"):
        guided(jnp.zeros((1, 2)), jnp.zeros((1,)), labels=jnp.array([1]))
