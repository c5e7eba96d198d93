"""Losses and weightings against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import diffusion, losses
from jaxdiff.schedules import EDMSchedule, make_schedule

TYPES = diffusion.PREDICTION_TYPES


@pytest.mark.parametrize("prediction_type", TYPES)
def test_min_snr_weights(prediction_type):
    snr = jnp.array([0.0, 0.01, 1.0, 5.0, 100.0, 1e6])
    w = losses.loss_weight(
        snr, prediction_type=prediction_type, weighting="min_snr", min_snr_gamma=5.0
    )
    s = np.asarray(snr, np.float64)
    clipped = np.minimum(s, 5.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = {
            "epsilon": np.where(s == 0, 1.0, clipped / s),
            "sample": clipped,
            "v_prediction": clipped / (s + 1),
        }[prediction_type]
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_p2_and_edm_and_snr_weights():
    snr = np.array([0.1, 1.0, 10.0])
    lw = losses.loss_weight
    np.testing.assert_allclose(
        lw(snr, prediction_type="epsilon", weighting="p2", p2_k=1.0, p2_gamma=0.5),
        (1 + snr) ** -0.5,
        rtol=1e-6,
    )
    sigma = 1 / np.sqrt(snr)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(
        lw(snr, prediction_type="sample", weighting="edm", sigma_data=0.5), lam, rtol=1e-5
    )
    np.testing.assert_allclose(lw(snr, prediction_type="epsilon", weighting="snr"), 1.0)
    np.testing.assert_allclose(
        lw(snr, prediction_type="uniform" and "sample", weighting="snr"), snr
    )


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "p2", "edm"])
def test_weighted_losses_agree_across_parameterisations(weighting):
    """The same denoiser expressed as eps, x0 or v gives the same weighted loss."""
    schedule = make_schedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (6, 4, 4, 2), minval=-1, maxval=1)
    t = jnp.array([1.0, 20.0, 200.0, 500.0, 800.0, 999.0])

    def x0_model(x_t, t):
        return jnp.tanh(0.8 * x_t + 0.01 * t[:, None, None, None] / 1000)

    results = []
    for p in TYPES:

        def model_fn(x_t, t, p=p):
            ac = schedule.alphas_cumprod[jnp.round(t).astype(jnp.int32)]
            a, s = jnp.sqrt(ac), jnp.sqrt(1 - ac)
            x0_hat = x0_model(x_t, t)
            eps_hat = diffusion.eps_from_x0(x_t, x0_hat, a, s)
            return diffusion.prediction_target(p, x0_hat, eps_hat, a, s)

        results.append(
            losses.diffusion_loss(
                model_fn,
                x0,
                jax.random.key(1),
                schedule=schedule,
                prediction_type=p,
                weighting=weighting,
                t=t,
            )
        )
    np.testing.assert_allclose(results[1], results[0], rtol=2e-3)
    np.testing.assert_allclose(results[2], results[0], rtol=2e-3)


@pytest.mark.parametrize("prediction_type", TYPES)
def test_perfect_model_has_zero_loss(prediction_type):
    schedule = make_schedule("squaredcos_cap_v2", 100)
    x0 = jax.random.normal(jax.random.key(0), (4, 3, 3, 1))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.array([0.0, 10.0, 50.0, 98.0])
    ac = schedule.alphas_cumprod[t.astype(jnp.int32)]
    target = diffusion.prediction_target(prediction_type, x0, noise, jnp.sqrt(ac), jnp.sqrt(1 - ac))
    loss = losses.diffusion_loss(
        lambda x, t: target,
        x0,
        jax.random.key(2),
        schedule=schedule,
        prediction_type=prediction_type,
        t=t,
        noise=noise,
    )
    np.testing.assert_allclose(loss, 0.0, atol=1e-10)
    wrong = losses.diffusion_loss(
        lambda x, t: target + 0.5,
        x0,
        jax.random.key(2),
        schedule=schedule,
        prediction_type=prediction_type,
        t=t,
        noise=noise,
    )
    np.testing.assert_allclose(wrong, 0.25, rtol=1e-5)


def test_vlb_is_zero_for_the_true_posterior_and_decoder_nll_is_small():
    schedule = make_schedule("linear", 1000)
    x0 = jnp.round(jax.random.uniform(jax.random.key(0), (3, 4, 4, 1), minval=-1, maxval=1) * 127.5)
    x0 = x0 / 127.5
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.array([2, 100, 999])
    ac = schedule.alphas_cumprod[t]
    x_t = diffusion.q_sample(x0, noise, jnp.sqrt(ac), jnp.sqrt(1 - ac))
    vb = losses.vlb_term(noise, -jnp.ones_like(x0), x0, x_t, t, schedule=schedule)
    np.testing.assert_allclose(vb, 0.0, atol=2e-5)
    # Wrong variance: KL > 0 and equal to the closed form of two Gaussians with equal means.
    vb_large = losses.vlb_term(noise, jnp.ones_like(x0), x0, x_t, t, schedule=schedule)
    acp = schedule.alphas_cumprod[t - 1]
    beta = 1 - ac / acp
    r = np.asarray((1 - acp) / (1 - ac) * beta / beta, np.float64)  # var_q / var_p
    expected = 0.5 * (-1 - np.log(r) + r) / np.log(2)
    np.testing.assert_allclose(vb_large, expected, rtol=2e-3, atol=1e-7)
    # t = 0: the decoder NLL of the exact mean with the tiny variance is ~0 bits.
    t0 = jnp.zeros((3,), jnp.int32)
    x_t0 = diffusion.q_sample(
        x0, noise, jnp.sqrt(schedule.alphas_cumprod[0]), jnp.sqrt(1 - schedule.alphas_cumprod[0])
    )
    nll = losses.vlb_term(noise, -jnp.ones_like(x0), x0, x_t0, t0, schedule=schedule)
    # The model mean is x0 exactly; the std is sqrt(posterior variance at t = 1).
    std = math.sqrt(
        float(
            diffusion.q_posterior_variance(
                ac[0] * 0 + schedule.alphas_cumprod[1], schedule.alphas_cumprod[0]
            )
        )
    )
    z = (1 / 255) / std
    interior = 0.5 * (math.erf(z / math.sqrt(2)) - math.erf(-z / math.sqrt(2)))
    edge = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    xv = np.asarray(x0).reshape(3, -1)
    probs = np.where(np.abs(xv) > 0.999, edge, interior)
    np.testing.assert_allclose(nll, -np.log2(probs).mean(axis=1), rtol=1e-4)


def test_hybrid_loss_adds_vlb_and_only_its_variance_gets_vlb_gradients():
    schedule = make_schedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1), minval=-1, maxval=1)
    t = jnp.array([5.0, 600.0])
    noise = jax.random.normal(jax.random.key(1), x0.shape)

    def loss(theta, learned):
        def model_fn(x, t):
            eps_part = theta[0] * x
            return (
                jnp.concatenate([eps_part, jnp.full_like(x, theta[1])], -1) if learned else eps_part
            )

        return losses.diffusion_loss(
            model_fn,
            x0,
            jax.random.key(2),
            schedule=schedule,
            t=t,
            noise=noise,
            learned_variance=learned,
        ).sum()

    theta = jnp.array([0.3, 0.2])
    g_h, g_s = jax.grad(loss)(theta, True), jax.grad(loss)(theta, False)
    np.testing.assert_allclose(g_h[0], g_s[0], rtol=1e-6)  # mean: MSE only (stop_gradient)
    assert abs(float(g_h[1])) > 0
    assert float(loss(theta, True)) > float(loss(theta, False))


def test_edm_loss_and_denoiser():
    sched = EDMSchedule(sigma_data=0.5)
    x0 = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    sigma = jnp.array([0.01, 0.5, 2.0, 40.0])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    assert np.allclose(
        losses.edm_loss(lambda x, s: x0, x0, jax.random.key(2), schedule=sched, sigma=sigma), 0.0
    )
    denoise = losses.edm_denoiser(lambda x, c: jnp.zeros_like(x), sigma_data=0.5)
    x = x0 + sigma[:, None, None, None] * noise
    c_skip = 0.25 / (sigma**2 + 0.25)
    np.testing.assert_allclose(denoise(x, sigma), c_skip[:, None, None, None] * x, rtol=1e-6)
    got = losses.edm_loss(denoise, x0, jax.random.key(2), schedule=sched, sigma=sigma, noise=noise)
    want = sched.loss_weight(sigma) * jnp.mean(
        jnp.square(c_skip[:, None, None, None] * x - x0), axis=(1, 2, 3)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sampled_timesteps_and_bad_weighting():
    s = make_schedule("linear", 10)
    t = losses.sample_timesteps(jax.random.key(0), 1000, s)
    assert set(np.unique(np.asarray(t)).tolist()) == set(range(10))
    with pytest.raises(ValueError, match="'min-snr'.*allowed: uniform, snr, min_snr, p2, edm"):
        losses.diffusion_loss(
            lambda x, t: x, jnp.zeros((1, 2)), jax.random.key(0), schedule=s, weighting="min-snr"
        )
