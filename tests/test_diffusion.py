"""Forward process, conversions and posterior against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import diffusion
from jaxdiff.schedules import make_schedule


def _alpha_sigma(b=5, seed=0):
    rng = np.random.default_rng(seed)
    log_snr = rng.uniform(-8, 8, size=b).astype(np.float32)
    alpha = np.sqrt(1 / (1 + np.exp(-log_snr))).astype(np.float32)
    sigma = np.sqrt(1 / (1 + np.exp(log_snr))).astype(np.float32)
    return jnp.asarray(alpha), jnp.asarray(sigma)


def test_conversions_round_trip():
    alpha, sigma = _alpha_sigma()
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key0, (5, 4, 4, 3))
    eps = jax.random.normal(key1, (5, 4, 4, 3))
    x_t = diffusion.q_sample(x0, eps, alpha, sigma)
    x0_hat = diffusion.x0_from_eps(x_t, eps, alpha, sigma)
    v = diffusion.v_from_x0_eps(x0_hat, eps, alpha, sigma)
    eps_back = diffusion.eps_from_v(x_t, v, alpha, sigma)
    np.testing.assert_allclose(eps_back, eps, atol=1e-4 * 50)  # x0 at logSNR -8 is ill-posed
    np.testing.assert_allclose(diffusion.x0_from_v(x_t, v, alpha, sigma), x0, atol=2e-3)
    for src in diffusion.PREDICTION_TYPES:
        out = diffusion.prediction_target(src, x0, eps, alpha, sigma)
        for dst in diffusion.PREDICTION_TYPES:
            got = diffusion.convert(out, x_t, alpha, sigma, source=src, target=dst)
            want = diffusion.prediction_target(dst, x0, eps, alpha, sigma)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-3 if src != "epsilon" else 0.1)
    score = diffusion.score_from_eps(eps, sigma)
    np.testing.assert_allclose(diffusion.eps_from_score(score, sigma), eps, rtol=1e-6)


def test_conversions_are_exact_in_well_conditioned_range():
    alpha = jnp.array([0.8, 0.6])
    sigma = jnp.array([0.6, 0.8])
    x0 = jnp.array([[0.3, -1.0], [0.5, 0.25]])
    eps = jnp.array([[1.0, 0.5], [-2.0, 0.1]])
    x_t = diffusion.q_sample(x0, eps, alpha, sigma)
    np.testing.assert_allclose(x_t, [[0.84, -0.5], [-1.3, 0.23]], rtol=1e-6)
    v = diffusion.v_from_x0_eps(x0, eps, alpha, sigma)
    np.testing.assert_allclose(v, [[0.62, 1.0], [-1.6, -0.14]], rtol=1e-6)
    for p, out in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        x0_hat, eps_hat = diffusion.to_x0_eps(out, x_t, alpha, sigma, p)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-6)
        np.testing.assert_allclose(eps_hat, eps, atol=1e-6)


def test_q_sample_moments():
    alpha, sigma = jnp.float32(0.6), jnp.float32(0.8)
    x0 = jnp.full((200_000, 1), 1.5)
    noise = jax.random.normal(jax.random.key(3), x0.shape)
    x_t = np.asarray(diffusion.q_sample(x0, noise, alpha, sigma))
    assert abs(x_t.mean() - 0.9) < 4 * 0.8 / np.sqrt(200_000)
    assert abs(x_t.var() - 0.64) < 0.01


def test_posterior_matches_gaussian_conditioning():
    """Mean/variance of q(x_{t-1} | x_t, x_0) from the joint Gaussian, in float64."""
    s = make_schedule("linear", 1000)
    ac = np.asarray(s.alphas_cumprod, np.float64)
    for t in [1, 10, 500, 999]:
        a_prev, a_t = ac[t - 1], ac[t]
        a_step = a_t / a_prev
        # Given x0: x_prev = sqrt(a_prev) x0 + sqrt(1-a_prev) e1; x_t = sqrt(a_step) x_prev + ...
        cov_pp, cov_pt = 1 - a_prev, np.sqrt(a_step) * (1 - a_prev)
        cov_tt = 1 - a_t
        x0v, xtv = 0.7, -0.3
        mean_ref = np.sqrt(a_prev) * x0v + cov_pt / cov_tt * (xtv - np.sqrt(a_t) * x0v)
        var_ref = cov_pp - cov_pt**2 / cov_tt
        mean, var = diffusion.q_posterior(jnp.array([x0v]), jnp.array([xtv]), a_t, a_prev)
        np.testing.assert_allclose(float(mean[0]), mean_ref, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(float(var), var_ref, rtol=1e-3)  # 1 - a_t/a_prev in f32
        beta = float(s.betas[t])
        np.testing.assert_allclose(float(var), beta * (1 - a_prev) / (1 - a_t), rtol=1e-3)


def test_reverse_log_variance_types():
    s = make_schedule("linear", 1000)
    ac = np.asarray(s.alphas_cumprod, np.float64)
    t = 100
    small = np.log(float(s.betas[t]) * (1 - ac[t - 1]) / (1 - ac[t]))
    large = np.log(float(s.betas[t]))
    rv = diffusion.reverse_log_variance
    np.testing.assert_allclose(rv(ac[t], ac[t - 1], "fixed_small"), small, rtol=1e-3)
    np.testing.assert_allclose(rv(ac[t], ac[t - 1], "fixed_large"), large, rtol=1e-3)
    v = jnp.array([[-1.0, 0.0, 1.0]])
    got = rv(ac[t], ac[t - 1], "learned_range", v)
    np.testing.assert_allclose(got[0], [small, (small + large) / 2, large], rtol=1e-3)
    # At t = 0 the posterior variance is 0: clamped at 1e-20 like diffusers.
    np.testing.assert_allclose(rv(ac[0], 1.0, "fixed_small"), np.log(1e-20), rtol=1e-6)
    with pytest.raises(ValueError, match="allowed: fixed_small, fixed_large, learned_range"):
        rv(ac[t], ac[t - 1], "fixed_medium")
    with pytest.raises(ValueError, match="model_var_values"):
        rv(ac[t], ac[t - 1], "learned_range")


def test_edm_preconditioning_closed_form():
    sigma, sd = np.array([0.002, 0.5, 80.0]), 0.5
    c_skip, c_out, c_in, c_noise = diffusion.edm_preconditioning(sigma, sd)
    np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="'eps'.*allowed: epsilon, sample, v_prediction"):
        diffusion.to_x0_eps(jnp.zeros(2), jnp.zeros(2), 0.5, 0.5, "eps")
