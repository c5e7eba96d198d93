"""Schedules against closed forms (diffusers parity is in test_schedules_parity.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.schedules import make_schedule


def test_linear_betas_endpoints_and_cumprod():
    s = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    betas = np.asarray(s.betas)
    assert betas.dtype == np.float32 and betas.shape == (1000,)
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-7)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=5e-4)
    expected = np.cumprod(1.0 - betas.astype(np.float64))
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), expected, rtol=2e-6)


def test_scaled_linear_is_linear_in_sqrt_beta():
    s = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    root = np.sqrt(np.asarray(s.betas, np.float64))
    np.testing.assert_allclose(np.diff(root), (0.012**0.5 - 0.00085**0.5) / 999, rtol=2e-3)


def test_cosine_matches_alpha_bar_formula():
    s = make_schedule("squaredcos_cap_v2", 1000)

    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(1, 1001) / 1000
    expected = np.array([f(x) for x in t]) / f(0)
    got = np.asarray(s.alphas_cumprod, np.float64)
    # beta is capped at 0.999 near t = T, where alpha_bar is ~0 anyway.
    np.testing.assert_allclose(got[:990], expected[:990], rtol=2e-5)
    assert np.asarray(s.betas).max() <= 0.999 + 1e-7


def test_sigmoid_schedule_bounds():
    betas = np.asarray(make_schedule("sigmoid", 100, beta_start=1e-4, beta_end=0.02).betas)
    sig = 1 / (1 + np.exp(-np.linspace(-6, 6, 100)))
    np.testing.assert_allclose(betas, sig * (0.02 - 1e-4) + 1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_zero_terminal_snr_rescale(name):
    plain = make_schedule(name, 1000, beta_start=0.00085, beta_end=0.012)
    z = make_schedule(name, 1000, beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    assert float(z.alphas_cumprod[-1]) == 0.0
    a0, b0 = np.sqrt(np.float32(plain.alphas_cumprod[0])), np.sqrt(np.float32(z.alphas_cumprod[0]))
    assert abs(int(a0.view(np.int32)) - int(b0.view(np.int32))) <= 1
    # sqrt(alphas_cumprod) is an affine map of the original one.
    p = np.sqrt(np.asarray(plain.alphas_cumprod, np.float64))
    q = np.sqrt(np.asarray(z.alphas_cumprod, np.float64))
    np.testing.assert_allclose(q, (p - p[-1]) * p[0] / (p[0] - p[-1]), atol=2e-6)
    assert float(z.snr(jnp.array(999))) == 0.0


def test_fractional_t_agrees_with_integers_and_interpolates_sigma():
    s = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    ti = jnp.array([0, 1, 500, 999])
    np.testing.assert_allclose(s.alpha(ti), s.alpha(ti.astype(jnp.float32)), rtol=2e-6)
    np.testing.assert_allclose(s.sigma(ti), s.sigma(ti.astype(jnp.float32)), rtol=2e-6)
    np.testing.assert_allclose(s.log_snr(ti), s.log_snr(ti.astype(jnp.float32)), atol=1e-5)
    ks = np.asarray(s.karras_sigmas(), np.float64)
    np.testing.assert_allclose(float(s.karras_sigma(250.25)), 0.75 * ks[250] + 0.25 * ks[251], 1e-6)
    a, sg = s.alpha(jnp.array([123.4])), s.sigma(jnp.array([123.4]))
    np.testing.assert_allclose(a**2 + sg**2, 1.0, rtol=1e-6)
    assert np.all(np.diff(np.asarray(s.log_snr(jnp.arange(1000)))) < 0)


def test_schedule_is_a_pytree_usable_under_jit():
    s = make_schedule("linear", 50)
    out = jax.jit(lambda sch, t: sch.alpha(t))(s, jnp.array([3.5]))
    np.testing.assert_allclose(out, s.alpha(jnp.array([3.5])), rtol=1e-6)
    assert len(jax.tree.leaves(s)) == 2


def test_vp_linear_continuous():
    s = schedules.VPLinearSchedule(beta_min=0.1, beta_max=20.0)
    t = np.array([1e-3, 0.1, 0.5, 1.0])
    b = 0.1 * t + 0.5 * 19.9 * t**2
    np.testing.assert_allclose(s.log_snr(t), -np.log(np.expm1(b)), rtol=1e-5)
    np.testing.assert_allclose(s.alpha(t) ** 2, np.exp(-b), rtol=1e-5)
    np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-6)
    assert np.isfinite(float(s.log_snr(1e-7)))


def test_cosine_continuous_and_resolution_shift():
    s = schedules.CosineSchedule(logsnr_min=-15.0, logsnr_max=15.0)
    np.testing.assert_allclose(s.log_snr(np.array([0.0, 1.0])), [15.0, -15.0], atol=2e-3)
    t = np.array([0.2, 0.5, 0.8])
    np.testing.assert_allclose(s.alpha(t), np.cos(np.pi * t / 2), atol=1e-3)
    shifted = schedules.CosineSchedule(resolution=256, base_resolution=64)
    np.testing.assert_allclose(shifted.log_snr(t) - s.log_snr(t), 2 * np.log(64 / 256), rtol=1e-5)


def test_edm_schedule():
    s = schedules.EDMSchedule()
    sig = np.asarray(s.sample_sigma(jax.random.key(0), (200_000,)))
    np.testing.assert_allclose(np.log(sig).mean(), -1.2, atol=0.01)
    np.testing.assert_allclose(np.log(sig).std(), 1.2, atol=0.01)
    np.testing.assert_allclose(s.loss_weight(1.0), (1 + 0.25) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(s.alpha(2.0) * 2.0, s.sigma(2.0), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cosinus"), "cosinus.*allowed: linear"),
        (dict(name="linear", beta_start=0.02, beta_end=0.01), "beta_start=0.02, beta_end=0.01"),
        (dict(name="linear", beta_start=0.02, beta_end=0.02), "beta_start < beta_end"),
        (dict(name="linear", num_train_timesteps=0), "num_train_timesteps.*got 0"),
        (dict(trained_betas=[0.1, 1.5]), r"\(0, 1\]"),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(**kwargs)
