"""The noisy classifier of classifier guidance: model, objective, and guidance with it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiff
from jaxdiff import models, training

SCHEDULE = jaxdiff.make_schedule("linear", 1000)


def small_classifier():
    return models.NoisyClassifier(
        channels=(8, 16), num_res_blocks=1, attention_levels=(1,), head_dim=8, norm_groups=4,
        num_outputs=3,
    )  # fmt: skip


def test_classifier_is_the_unet_trunk_with_a_pooling_head():
    clf = small_classifier()
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10.0, 900.0])
    params = jax.jit(clf.init)(jax.random.key(0), x, t)["params"]
    assert set(params) == {"conv_in", "down_blocks_0", "down_blocks_1", "mid_block",
                           "norm_out", "head", "time_embedding"}  # fmt: skip
    unet = models.UNet(channels=(8, 16), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                       norm_groups=4)  # fmt: skip
    trunk = jax.eval_shape(unet.init, jax.random.key(0), x, t)["params"]
    for name in ("down_blocks_0", "down_blocks_1", "mid_block"):  # same trunk as a U-Net's
        shapes = jax.tree.map(jnp.shape, params[name])
        assert shapes == jax.tree.map(jnp.shape, trunk[name])
    apply = jax.jit(clf.apply)
    logits = apply({"params": params}, x, t)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    # time conditioning matters
    assert not np.allclose(logits[0], apply({"params": params}, x, t[::-1])[0])


def test_objective_is_cross_entropy_at_the_drawn_noise_level():
    clf = small_classifier()
    x0 = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 1])
    params = jax.jit(clf.init)(jax.random.key(0), x0, jnp.zeros((4,)))["params"]
    loss_fn = jax.jit(training.make_classifier_loss_fn(clf.apply, schedule=SCHEDULE))
    keys = jax.random.split(jax.random.key(2), 4)
    loss, aux = loss_fn(params, {"image": x0, "label": labels}, keys, jax.random.key(3))
    # Recompute independently with the same per-example draws.
    ks = jax.vmap(jax.random.split)(keys)
    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, 1000))(ks[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, (8, 8, 1)))(ks[:, 1])
    ac = np.asarray(SCHEDULE.alphas_cumprod)[np.asarray(t)]
    x_t = np.sqrt(ac)[:, None, None, None] * x0 + np.sqrt(1 - ac)[:, None, None, None] * eps
    logits = jax.jit(clf.apply)({"params": params}, jnp.asarray(x_t, jnp.float32), t * 1.0)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(loss, -logp[jnp.arange(4), labels], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(aux["accuracy"], np.argmax(logits, -1) == labels)


def test_a_trained_classifier_guides_towards_its_class():
    """Three well-separated 2x2 patterns: a few hundred steps learn p(y | x_t); guidance of
    an unconditional Gaussian-mixture model towards class y then draws mostly class y."""
    centres = jnp.array([[[1.0, -1.0], [-1.0, 1.0]], [[1.0, 1.0], [-1.0, -1.0]],
                         [[-1.0, 1.0], [1.0, -1.0]]])[..., None] * 0.8  # fmt: skip
    clf = models.NoisyClassifier(channels=(8,), num_res_blocks=1, attention_levels=(),
                                 mid_attention=False, norm_groups=4, num_outputs=3)  # fmt: skip
    params = clf.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1,)))["params"]
    tx = optax.adam(3e-3)
    step = jax.jit(training.make_train_step(
        training.make_classifier_loss_fn(clf.apply, schedule=SCHEDULE, max_timestep=600), tx
    ))  # fmt: skip
    state = training.create_train_state(params, tx)
    for i in range(300):
        y = jax.random.randint(jax.random.key(100 + i), (64,), 0, 3)
        x0 = centres[y] + 0.1 * jax.random.normal(jax.random.key(200 + i), (64, 2, 2, 1))
        state, metrics = step(state, {"image": x0, "label": y}, jax.random.key(7))
    log_prob = jax.jit(training.classifier_log_prob(clf.apply, state.params))
    # nearly clean inputs are classified correctly
    y = jnp.arange(60) % 3
    lp = jax.vmap(lambda c: log_prob(centres[y], jnp.full((60,), 20.0), jnp.full((60,), c)))(
        jnp.arange(3)
    )
    assert float(jnp.mean(jnp.argmax(lp, axis=0) == y)) > 0.95

    def eps_mixture(x, t):  # the exact unconditional denoiser of the (noise-free) centres
        a, s = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
        flat = x.reshape(x.shape[0], -1)
        c = centres.reshape(3, -1)
        d = -jnp.sum((flat[:, None] - a[:, None] * c[None]) ** 2, -1) / (2 * s**2)
        w = jax.nn.softmax(d, axis=-1)
        mean = a * (w @ c)
        return ((flat - mean) / s).reshape(x.shape)

    guided = jaxdiff.classifier_guidance(
        eps_mixture, lambda x, t, labels: log_prob(x, t, labels), schedule=SCHEDULE, scale=3.0
    )
    target = jnp.full((256,), 2)
    noise = jax.random.normal(jax.random.key(9), (256, 2, 2, 1))
    out = jaxdiff.sample(guided, noise, schedule=SCHEDULE, sampler="ddim", num_steps=25,
                         clip_sample=False, cond={"labels": target})  # fmt: skip
    nearest = jnp.argmin(jnp.sum((out[:, None] - centres[None]) ** 2, axis=(2, 3, 4)), axis=1)
    plain = jaxdiff.sample(eps_mixture, noise, schedule=SCHEDULE, sampler="ddim", num_steps=25,
                           clip_sample=False)  # fmt: skip
    plain_nearest = jnp.argmin(jnp.sum((plain[:, None] - centres[None]) ** 2, (2, 3, 4)), 1)
    assert float(jnp.mean(nearest == 2)) > 0.9 > float(jnp.mean(plain_nearest == 2)) + 0.4
