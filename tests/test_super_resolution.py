"""Cascaded super-resolution: conditioning on a low-resolution image with noise
conditioning augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import losses, models
from jaxdiff.models import super_resolution as sr
from jaxdiff.training.super_resolution_objective import make_super_resolution_loss_fn

SCHEDULE = jaxdiff.make_schedule("linear", 1000)


def small_sr_unet():
    unet = models.UNet(channels=(8, 16), num_res_blocks=1, attention_levels=(), norm_groups=4,
                       mid_attention=False, num_classes=4, out_channels=1)  # fmt: skip
    return sr.SuperResolutionUNet(unet=unet, factor=4)


def test_resampling_and_augmentation_levels():
    x = jax.random.normal(jax.random.key(0), (2, 2, 3, 1))
    np.testing.assert_allclose(sr.downsample(sr.upsample(x, 4), 4), x, rtol=1e-6)
    big = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(sr.downsample(big, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    noise = jnp.ones_like(x)
    np.testing.assert_array_equal(
        sr.augment_low_res(x, jnp.zeros(2, int), noise, schedule=SCHEDULE, augment_levels=4), x
    )
    got = sr.augment_low_res(x, jnp.array([1, 3]), noise, schedule=SCHEDULE, augment_levels=4)
    ac = np.asarray(SCHEDULE.alphas_cumprod)[[250, 750]]
    want = np.sqrt(ac)[:, None, None, None] * x + np.sqrt(1 - ac)[:, None, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of the factor 4"):
        sr.downsample(jnp.zeros((1, 6, 8, 1)), 4)


def test_the_model_sees_the_upsampled_low_res_image():
    model = small_sr_unet()
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.array([10.0, 500.0])
    low = jax.random.normal(jax.random.key(1), (2, 2, 2, 1))
    params = jax.jit(model.init)(jax.random.key(0), x, t, low_res=low)["params"]
    apply = jax.jit(model.apply)
    out = apply({"params": params}, x, t, low_res=low, labels=jnp.array([0, 2]))
    assert out.shape == x.shape
    other = apply({"params": params}, x, t, low_res=low * 0.0, labels=jnp.array([0, 2]))
    level = apply({"params": params}, x, t, low_res=low, labels=jnp.array([1, 3]))
    assert not np.allclose(out, other) and not np.allclose(out, level)
    with pytest.raises(ValueError, match="low_res is 4x4; for x of 8x8 and factor 4"):
        model.apply({"params": params}, x, t, low_res=jnp.zeros((2, 4, 4, 1)))


def test_objective_is_the_diffusion_loss_given_the_augmented_view():
    model = small_sr_unet()
    x0 = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    params = jax.jit(model.init)(jax.random.key(0), x0, jnp.zeros(3),
                                 low_res=jnp.zeros((3, 2, 2, 1)))["params"]  # fmt: skip
    loss_fn = make_super_resolution_loss_fn(model.apply, schedule=SCHEDULE, factor=4,
                                            augment_levels=4)  # fmt: skip
    keys = jax.random.split(jax.random.key(3), 3)
    loss, _ = jax.jit(loss_fn)(params, {"image": x0}, keys, jax.random.key(4))
    # the same draws, recomputed
    ks = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
    t = jax.vmap(lambda k: losses.sample_timesteps(k, 1, SCHEDULE)[0])(ks[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, (8, 8, 1)))(ks[:, 1])
    level = jax.vmap(lambda k: jax.random.randint(k, (), 0, 4))(ks[:, 2])
    aug = jax.vmap(lambda k: jax.random.normal(k, (2, 2, 1)))(ks[:, 3])
    z = sr.augment_low_res(sr.downsample(x0, 4), level, aug, schedule=SCHEDULE,
                           augment_levels=4)  # fmt: skip
    ac = np.asarray(SCHEDULE.alphas_cumprod)[np.asarray(t).astype(int)]
    x_t = np.sqrt(ac)[:, None, None, None] * x0 + np.sqrt(1 - ac)[:, None, None, None] * eps
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(x_t, jnp.float32), t,
                               low_res=z, labels=level)  # fmt: skip
    np.testing.assert_allclose(loss, np.mean((out - eps) ** 2, axis=(1, 2, 3)), rtol=1e-4)
    with pytest.raises(ValueError, match="augment_levels must be >= 1"):
        make_super_resolution_loss_fn(model.apply, schedule=SCHEDULE, factor=4, augment_levels=0)


def test_sampling_with_a_conditioned_model_fn():
    model = small_sr_unet()
    low = jax.random.normal(jax.random.key(5), (2, 2, 2, 1))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros(2),
                                 low_res=low)["params"]  # fmt: skip
    fn = sr.conditioned_model_fn(model, params, low, 1)
    out = jaxdiff.sample(fn, jax.random.normal(jax.random.key(6), (2, 8, 8, 1)),
                         schedule=SCHEDULE, sampler="ddim", num_steps=3)  # fmt: skip
    assert out.shape == (2, 8, 8, 1) and np.all(np.isfinite(out))
