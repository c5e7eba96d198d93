"""Inpainting for pixel models: replacement (any sampler) and RePaint, on a Gaussian target.

For x_0 ~ N(0, C) the noised marginal and the denoiser are closed forms, and the exact
conditional of the unknown coordinate given the known one is N(rho a, s^2 (1 - rho^2)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff

SCHEDULE = jaxdiff.make_schedule("linear")
RHO, S2, A = 0.9, 0.25, 0.8
COV = jnp.array([[1.0, RHO], [RHO, 1.0]]) * S2
EXACT_MEAN, EXACT_VAR = RHO * A, S2 * (1 - RHO**2)
N = 2000


def eps_model(x, t):
    alpha = SCHEDULE.alpha(t)[:, None, None]
    sigma = SCHEDULE.sigma(t)[:, None, None]
    cov = alpha**2 * COV[None] + sigma**2 * jnp.eye(2)[None]
    return sigma[:, :, 0] * jnp.linalg.solve(cov, x[..., None])[..., 0]  # -sigma * score


IMAGE = jnp.zeros((N, 2)).at[:, 0].set(A)
MASK = jnp.array([1.0, 0.0])  # keep coordinate 0, inpaint coordinate 1


def draw(sampler, **kw):
    noise = jax.random.normal(jax.random.key(0), (N, 2))
    return np.asarray(
        jaxdiff.sample(eps_model, noise, schedule=SCHEDULE, sampler=sampler,
                       key=jax.random.key(1), **kw)
    )  # fmt: skip


def test_repaint_resampling_approaches_the_exact_conditional():
    plain = draw("repaint", num_steps=250, image=IMAGE, mask=MASK, eta=1.0, clip_sample=False,
                 jump_length=1, jump_n_sample=1)  # fmt: skip
    resampled = draw("repaint", num_steps=250, image=IMAGE, mask=MASK, eta=1.0,
                     clip_sample=False, jump_length=10, jump_n_sample=10)  # fmt: skip
    np.testing.assert_allclose(resampled[:, 0], A, rtol=1e-7)  # the known coordinate: the image
    se = np.sqrt(EXACT_VAR / N)  # Monte-Carlo standard error of the mean, 0.005
    bias_plain = abs(plain[:, 1].mean() - EXACT_MEAN)
    bias_resampled = abs(resampled[:, 1].mean() - EXACT_MEAN)
    # Measured: replacement alone lands at mean 0.48 (exact 0.72); resampling at 0.69-0.70.
    assert bias_plain > 40 * se and bias_resampled < bias_plain / 5
    assert bias_resampled < 0.04  # RePaint is approximate: a small bias remains
    np.testing.assert_allclose(resampled[:, 1].var(), EXACT_VAR, rtol=0.1)


# A two-component Gaussian mixture in 2-D (equal weights, means (0.5, 0.8) and (-0.5, -0.4),
# covariance 0.05 [[1, 0.5], [0.5, 1]]): given x_0 = 0.1 the unknown coordinate's exact
# conditional is itself a mixture, 0.881 N(0.6, 0.0375) + 0.119 N(-0.1, 0.0375).
MIX_W, MIX_MU = jnp.array([0.5, 0.5]), jnp.array([[0.5, 0.8], [-0.5, -0.4]])
MIX_RHO, MIX_S2, MIX_A = 0.5, 0.05, 0.1
MIX_COV = jnp.array([[1.0, MIX_RHO], [MIX_RHO, 1.0]]) * MIX_S2


def mixture_eps_model(x, t):
    """-sigma_t * the exact score of the noised mixture (responsibilities times each
    component's Gaussian score)."""
    alpha, sigma = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
    cov = alpha[:, :, None] ** 2 * MIX_COV[None] + sigma[:, :, None] ** 2 * jnp.eye(2)[None]
    d = x[:, None, :] - alpha[:, None, :] * MIX_MU[None]  # [B, K, 2]
    solved = jnp.linalg.solve(cov[:, None], d[..., None])[..., 0]
    logp = jnp.log(MIX_W)[None] - 0.5 * jnp.sum(d * solved, -1)  # same cov for each k
    resp = jax.nn.softmax(logp, axis=1)
    return sigma * jnp.sum(resp[..., None] * solved, axis=1)


def mixture_conditional():
    """(weights, means, variance) of the exact conditional of x_1 given x_0 = MIX_A."""
    mu = np.asarray(MIX_MU, np.float64)
    lik = np.asarray(MIX_W) * np.exp(-0.5 * (MIX_A - mu[:, 0]) ** 2 / MIX_S2)
    return lik / lik.sum(), mu[:, 1] + MIX_RHO * (MIX_A - mu[:, 0]), MIX_S2 * (1 - MIX_RHO**2)


def test_repaint_on_a_gaussian_mixture_approaches_the_exact_conditional():
    """Measured (4000 draws, 250 steps, jump length 1): the mean's bias is -0.22 without
    resampling, -0.049 / -0.026 / -0.013 / -0.005 at r = 10 / 20 / 40 / 80, and -0.017 at
    r = 160 (the DDPM step's Gaussian kernel is itself approximate, so more resampling
    stops helping); the variance is 12% high at r = 80. RePaint is approximate, and the
    mode weights of the conditional are what it is slowest to get right."""
    w, means, var = mixture_conditional()
    exact_mean = float(np.sum(w * means))
    # P(x_1 > 0.25): the weight of the upper mode, its spread included
    exact_upper = float(
        np.sum(w * 0.5 * np.vectorize(math.erfc)((0.25 - means) / np.sqrt(2 * var)))
    )
    n = 2000
    image = jnp.zeros((n, 2)).at[:, 0].set(MIX_A)

    def unknown(r):
        noise = jax.random.normal(jax.random.key(0), (n, 2))
        x = jaxdiff.sample(mixture_eps_model, noise, schedule=SCHEDULE, sampler="repaint",
                           num_steps=250, key=jax.random.key(1), image=image, mask=MASK,
                           eta=1.0, clip_sample=False, jump_length=1, jump_n_sample=r)  # fmt: skip
        return np.asarray(x)[:, 1]

    plain, r10, r40 = unknown(1), unknown(10), unknown(40)
    biases = [abs(u.mean() - exact_mean) for u in (plain, r10, r40)]
    assert biases[0] > 0.15 and biases[0] > biases[1] > biases[2]  # resampling converges
    assert biases[2] < 0.03  # the Monte-Carlo standard error of the mean is 0.007
    assert abs(np.mean(r40 > 0.25) - exact_upper) < 0.04  # exact: 0.852
    assert abs(np.mean(plain > 0.25) - exact_upper) > 0.15  # replacement alone: 0.58


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "euler", "heun", "unipc"])
def test_replacement_keeps_the_known_region_with_any_sampler(sampler):
    out = draw(sampler, num_steps=20, known_image=IMAGE, known_mask=MASK)
    np.testing.assert_allclose(out[:, 0], A, atol=1e-6)
    plain = draw(sampler, num_steps=20)
    # conditioning moves the unknown coordinate towards rho * a (the unconditional mean is 0)
    assert out[:, 1].mean() > plain[:, 1].mean() + 0.2


def test_replacement_with_ddim_is_repaint_without_resampling():
    """Two implementations of the same algorithm: DDIM (eta 0) with the known region
    replaced by alpha_s image + sigma_s n, and RePaint with j = r = 1 fed the same n."""
    n = jax.random.normal(jax.random.key(5), (N, 2))
    start = jax.random.normal(jax.random.key(6), (N, 2))
    ddim = jaxdiff.sample(
        eps_model, start, schedule=SCHEDULE, sampler="ddim", num_steps=25, clip_sample=False,
        known_image=IMAGE, known_mask=MASK, known_noise=n,
    )  # fmt: skip
    loop = jaxdiff.SamplingLoop(
        "repaint", schedule=SCHEDULE, num_steps=25, image=IMAGE, mask=MASK, eta=0.0,
        clip_sample=False, jump_length=1, jump_n_sample=1,
    )  # fmt: skip
    z = jnp.broadcast_to(n, (loop.num_model_calls, 2, N, 2))
    repaint = loop.run(eps_model, start, step_noise=z)
    np.testing.assert_allclose(ddim, repaint, rtol=1e-5, atol=1e-5)


def test_inpainting_inputs_are_checked():
    with pytest.raises(ValueError, match="needs both known_image= and known_mask="):
        jaxdiff.SamplingLoop("ddim", schedule=SCHEDULE, num_steps=5, known_image=IMAGE)
    with pytest.raises(ValueError, match="known_noise= is needed with start_step > 0"):
        jaxdiff.SamplingLoop(
            "ddim", schedule=SCHEDULE, num_steps=5, start_step=2, known_image=IMAGE,
            known_mask=MASK,
        )  # fmt: skip
    with pytest.raises(ValueError, match="repaint needs image="):
        jaxdiff.SamplingLoop("repaint", schedule=SCHEDULE, num_steps=5)
