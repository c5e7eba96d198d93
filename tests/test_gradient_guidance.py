"""Classifier / gradient guidance against closed forms on a Gaussian mixture.

For x_0 ~ sum_k pi_k N(mu_k, s_k^2 I) the noised marginal, its score, the class posterior
p(y | x_t) and every class-conditional score are closed forms, and Bayes' rule says
grad log p_t(x | y) = grad log p_t(x) + grad log p(y | x_t): guidance with scale 1 must turn
the unconditional model into the class-conditional one exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import jaxdiff
from jaxdiff import diffusion
from jaxdiff.guidance import classifier_guidance, gradient_guidance

SCHEDULE = jaxdiff.make_schedule("linear", 1000)
MU = jnp.array([[-2.0, 0.5], [1.5, 2.0], [1.0, -2.5]])
S2 = jnp.array([0.09, 0.25, 0.04])  # component variances s_k^2
LOG_PI = jnp.log(jnp.array([0.5, 0.3, 0.2]))


def _components(x, t):
    alpha = SCHEDULE.alpha(t)[:, None, None]
    sigma = SCHEDULE.sigma(t)[:, None, None]
    var = alpha**2 * S2[None, :, None] + sigma**2  # [B, K, 1]
    diff = x[:, None, :] - alpha * MU[None]  # [B, K, D]
    log_n = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), -1)  # [B, K]
    return diff, var, log_n + LOG_PI, sigma[:, :, 0]


def eps_mixture(x, t):
    diff, var, log_joint, sigma = _components(x, t)
    w = jax.nn.softmax(log_joint, axis=-1)[..., None]
    return sigma * jnp.sum(w * diff / var, axis=1)  # eps = -sigma * score


def eps_class(x, t, labels):
    diff, var, _, sigma = _components(x, t)
    pick = jnp.take_along_axis(diff / var, labels[:, None, None], axis=1)[:, 0]
    return sigma * pick


def log_prob(x, t, labels):
    _, _, log_joint, _ = _components(x, t)
    post = log_joint - logsumexp(log_joint, axis=-1, keepdims=True)
    return jnp.take_along_axis(post, labels[:, None], axis=1)[:, 0]


def in_prediction_type(eps_fn, prediction_type):
    def model(x, t, **cond):
        eps = eps_fn(x, t, **cond)
        alpha, sigma = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
        x0 = diffusion.x0_from_eps(x, eps, alpha, sigma)
        return diffusion.prediction_target(prediction_type, x0, eps, alpha, sigma)

    return model


def as_eps(output, x, t, prediction_type):
    alpha, sigma = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
    return diffusion.to_x0_eps(output, x, alpha, sigma, prediction_type)[1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_scale_one_is_the_class_conditional_model_for_every_prediction_type(prediction_type):
    x = jax.random.normal(jax.random.key(0), (64, 2)) * 2.0
    t = jax.random.uniform(jax.random.key(1), (64,), minval=20.0, maxval=980.0)
    labels = jax.random.randint(jax.random.key(2), (64,), 0, 3)
    model = in_prediction_type(eps_mixture, prediction_type)  # unconditional
    guided = jax.jit(
        classifier_guidance(
            model, log_prob, schedule=SCHEDULE, prediction_type=prediction_type, scale=1.0
        )
    )
    got = as_eps(guided(x, t, labels=labels), x, t, prediction_type)
    np.testing.assert_allclose(got, eps_class(x, t, labels), rtol=2e-4, atol=2e-4)
    # the scale multiplies the added score: s = 2.5 adds 2.5 times the classifier gradient
    got2 = as_eps(guided(x, t, labels=labels, gradient_scale=2.5), x, t, prediction_type)
    expected = eps_mixture(x, t) + 2.5 * (eps_class(x, t, labels) - eps_mixture(x, t))
    np.testing.assert_allclose(got2, expected, rtol=1e-3, atol=1e-3)


def test_guided_samples_follow_the_class_conditional_distribution():
    n, k = 2000, 1
    labels = jnp.full((n,), k)
    guided = classifier_guidance(eps_mixture, log_prob, schedule=SCHEDULE)

    @jax.jit
    def draw(noise, scale):
        return jaxdiff.sample(
            guided, noise, schedule=SCHEDULE, sampler="dpm_solver", num_steps=25,
            cond={"labels": labels, "gradient_scale": scale},
        )  # fmt: skip

    noise = jax.random.normal(jax.random.key(3), (n, 2))
    x = np.asarray(draw(noise, 1.0))
    exact = jaxdiff.sample(
        eps_class, noise, schedule=SCHEDULE, sampler="dpm_solver", num_steps=25,
        cond={"labels": labels},
    )  # fmt: skip
    np.testing.assert_allclose(x, exact, atol=2e-3)  # the same model, up to rounding
    # Monte-Carlo error of the mean: s / sqrt(n) = 0.008; of the variance: s^2 sqrt(2/n).
    np.testing.assert_allclose(x.mean(0), MU[k], atol=0.04)
    np.testing.assert_allclose(x.var(0), [S2[k]] * 2, rtol=0.1)
    other = np.asarray(draw(noise, 0.0))  # scale 0: the mixture, same compiled loop
    assert draw._cache_size() == 1 and other.std(0).min() > 1.0


def test_x0_based_gradient_flows_through_the_model():
    # eps(x) = c x gives x0(x) = a x with a = (1 - sigma c) / alpha; for the score
    # -|x0 - m|^2 / 2 the gradient in x is -a (a x - m).
    c, m = 0.3, jnp.array([0.5, -1.0])
    x = jax.random.normal(jax.random.key(4), (8, 2))
    t = jnp.linspace(50.0, 950.0, 8)
    guided = jax.jit(gradient_guidance(
        lambda x, t: c * x, lambda x0, t: -0.5 * jnp.sum((x0 - m) ** 2, -1),
        schedule=SCHEDULE, scale=2.0, x0_based=True,
    ))  # fmt: skip
    alpha, sigma = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
    a = (1.0 - sigma * c) / alpha
    g = -a * (a * x - m)
    np.testing.assert_allclose(guided(x, t), c * x - 2.0 * sigma * g, rtol=1e-5, atol=1e-5)


def test_learned_variance_keeps_the_variance_half():
    x = jnp.ones((2, 4, 4, 3))
    t = jnp.array([100.0, 700.0])
    out = jnp.concatenate([x * 0.1, x * -0.7], -1)
    guided = jax.jit(gradient_guidance(
        lambda x, t: out, lambda x, t: jnp.sum(x, axis=(1, 2, 3)), schedule=SCHEDULE,
        learned_variance=True,
    ))  # fmt: skip
    got = guided(x, t)
    np.testing.assert_allclose(got[..., 3:], out[..., 3:])
    sigma = SCHEDULE.sigma(t)[:, None, None, None]
    np.testing.assert_allclose(got[..., :3], 0.1 - sigma * 1.0 + 0 * x, rtol=1e-6)


def test_labels_reach_a_conditional_model_only_when_asked():
    seen = []

    def conditional(x, t, labels):
        seen.append(labels.shape)
        return eps_mixture(x, t)

    x, t, labels = jnp.ones((2, 2)), jnp.array([100.0, 200.0]), jnp.array([0, 1])
    classifier_guidance(conditional, log_prob, schedule=SCHEDULE, conditional_model=True)(
        x, t, labels=labels
    )
    assert seen == [(2,)]
    with pytest.raises(TypeError, match="labels"):
        classifier_guidance(conditional, log_prob, schedule=SCHEDULE)(x, t, labels=labels)
