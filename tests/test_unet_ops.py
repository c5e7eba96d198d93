"""The U-Net's own layer formulations against their definitions (lax convolution, flax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models.ops import PAD_1, Conv, Dense


def _check_vjp(fast, definition, *args):
    ct = jax.random.normal(jax.random.key(9), jnp.shape(definition(*args)))
    out, vjp = jax.vjp(fast, *args)
    ref_out, ref_vjp = jax.vjp(definition, *args)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    for i, (a, b) in enumerate(zip(vjp(ct), ref_vjp(ct), strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()),
                                   err_msg=f"argument {i}")  # fmt: skip


@pytest.mark.parametrize(
    "size, k, stride, padding",
    [(4, 3, 1, PAD_1), (2, 3, 1, PAD_1), (6, 3, 1, PAD_1), (6, 3, 2, ((0, 1), (0, 1))),
     (3, 1, 1, ((0, 0), (0, 0)))],
)  # fmt: skip
def test_conv_matches_lax_convolution(size, k, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    conv = Conv(7, k, stride, padding)
    params = conv.init(jax.random.key(1), x)["params"]
    params = {"kernel": params["kernel"], "bias": jnp.arange(7.0) / 7}

    def definition(x, kernel, bias):
        dims = ("NHWC", "HWIO", "NHWC")
        s = (stride, stride)
        y = jax.lax.conv_general_dilated(x, kernel, s, padding, dimension_numbers=dims)
        return y + bias

    fast = lambda x, kernel, bias: conv.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    _check_vjp(fast, definition, x, params["kernel"], params["bias"])


def test_dense_matches_flax_dense():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), (2, 3, 5))
    params = nn.Dense(4).init(jax.random.key(1), x)
    params["params"]["bias"] = jnp.arange(4.0)
    np.testing.assert_allclose(Dense(4).apply(params, x), nn.Dense(4).apply(params, x), rtol=1e-6)


def test_upsample_and_pool_gradients():
    from jaxdiff.models.layers import avg_pool2, upsample_nearest

    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
    b, h, w, c = x.shape
    _check_vjp(upsample_nearest, lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), x)
    x2 = jax.random.normal(jax.random.key(1), (2, 6, 4, 5))
    _check_vjp(avg_pool2, lambda x: x.reshape(2, 3, 2, 2, 2, 5).mean((2, 4)), x2)
