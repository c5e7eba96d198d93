"""VAE training: the per-example loss against closed forms, the PatchGAN step against direct
differentiation (adaptive weight, both updates, the disc_start switch), and exact resume of the
two-optimizer state through train_loop on 8 devices."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff.models import AutoencoderKL, DiagonalGaussian
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.training import (
    Checkpointer,
    init_sharded_state,
    jit_train_step,
    make_mesh,
    train_loop,
)
from jaxdiff.training import sharding as sh
from jaxdiff.training.adversarial import (
    AdversarialTrainState,
    hinge_discriminator_loss,
    make_adversarial_init_fn,
    make_vae_gan_train_step,
)
from jaxdiff.training.step import example_keys
from jaxdiff.training.vae_objective import (
    make_vae_loss_fn,
    make_vae_terms_fn,
    perceptual_loss,
    reconstruction_loss,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "unet"))
from random_weights import random_params  # noqa: E402
from vae_features import pool_features  # noqa: E402

LAST = ("decoder", "conv_out", "kernel")
# One level (no resampling) and no attention: the smallest program with every loss term.
AE = AutoencoderKL(
    in_channels=1, out_channels=1, latent_channels=2, channels=(4,), norm_groups=2,
    mid_attention=False,
)  # fmt: skip
DISC = PatchDiscriminator(channels=4, num_layers=1)


def _images(seed, b=4, size=8):
    return np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 1)).astype(np.float32)


def _encode(p, x):
    return AE.apply({"params": p}, x, method="encode")


def _decode(p, z):
    return AE.apply({"params": p}, z, method="decode")


def _disc(p, x):
    return DISC.apply({"params": p}, x)


@functools.cache
def _init():
    """Random parameters without compiling an initialiser (as the other model tests)."""
    x = jnp.zeros((1, 8, 8, 1))
    shapes = [jax.eval_shape(m.init, jax.random.key(0), x)["params"] for m in (AE, DISC)]
    return tuple(jax.tree.map(jnp.asarray, random_params(s, i)) for i, s in enumerate(shapes))


# --- the per-example loss --------------------------------------------------------------------


def test_reconstruction_and_perceptual_losses_match_closed_forms():
    x, y = _images(0), _images(1)
    d = (y - x).astype(np.float64)
    np.testing.assert_allclose(reconstruction_loss(x, y, "l1"), np.abs(d).sum((1, 2, 3)), 1e-5)
    np.testing.assert_allclose(reconstruction_loss(x, y, "l2"), (d**2).sum((1, 2, 3)), 1e-5)
    pooled = d.reshape(4, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    want = (d**2).mean((1, 2, 3)) + (pooled**2).mean((1, 2, 3))
    np.testing.assert_allclose(perceptual_loss(pool_features, x, y), want, rtol=1e-5)


def test_vae_loss_is_the_documented_per_example_sum():
    """L = sum |x - D(z)| + w_p n P + w_kl KL with z = mean + exp(logvar / 2) eps per example,
    for a linear 'autoencoder' whose every term is known in closed form."""
    x = _images(2)

    def encode(p, img):
        return DiagonalGaussian(p["a"] * img[..., :1, :1, :], jnp.full((4, 1, 1, 1), p["lv"]))

    def decode(p, z):
        return jnp.broadcast_to(p["c"] * z, (z.shape[0], 8, 8, 1))

    params = {"a": jnp.float32(0.7), "lv": jnp.float32(-1.5), "c": jnp.float32(1.3)}
    keys = jax.random.split(jax.random.key(3), 4)
    loss_fn = make_vae_loss_fn(
        encode, decode, reconstruction="l1", kl_weight=0.01, perceptual_fn=pool_features,
        perceptual_weight=0.5,
    )  # fmt: skip
    loss, aux = loss_fn(params, {"image": x}, keys, None)
    eps = np.array([np.asarray(jax.random.normal(k, (1, 1, 1))) for k in keys]).reshape(4)
    mean = 0.7 * x[:, 0, 0, 0].astype(np.float64)
    rec = np.broadcast_to((1.3 * (mean + np.exp(-0.75) * eps))[:, None, None, None], x.shape)
    kl = 0.5 * (mean**2 + np.exp(-1.5) - 1 + 1.5)
    p = perceptual_loss(pool_features, jnp.asarray(x), jnp.asarray(rec, jnp.float32))
    l1 = np.abs(x - rec).sum((1, 2, 3))
    np.testing.assert_allclose(aux["reconstruction"], l1, rtol=1e-5)
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, l1 + 0.5 * 64 * np.asarray(p) + 0.01 * kl, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reconstruction": "l3"}, "Unknown reconstruction loss 'l3'; allowed: ('l1', 'l2')"),
        ({"kl_weight": -1.0}, "kl_weight and perceptual_weight must be >= 0"),
    ],
)
def test_bad_vae_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_vae_loss_fn(_encode, _decode, **kwargs)


# --- the adversarial step --------------------------------------------------------------------


@functools.cache
def _gan_step(disc_start):
    terms = make_vae_terms_fn(_encode, _decode, reconstruction="l2")
    step = make_vae_gan_train_step(
        terms, _disc, SGD, SGD, last_layer=LAST, disc_start=disc_start, kl_weight=KL_W,
        disc_weight=DISC_W,
    )  # fmt: skip
    return jax.jit(step)


SGD, KL_W, DISC_W = optax.sgd(1.0), 1e-3, 0.5


def test_gan_step_matches_direct_differentiation_before_and_after_disc_start():
    """With SGD(lr=1) both updates are minus the gradients: compare them (and the adaptive
    weight) with jax.grad of LDM's losses written out independently. Before disc_start
    (step 0) the autoencoder gets the plain VAE gradient and the discriminator and its
    optimizer state stay bit for bit as initialised; at disc_start (step 1) both train."""
    # The adaptive weight of these parameters is far from LDM's clip at 1e4 (checked below).
    ae, disc = _init()
    state = make_adversarial_init_fn(lambda k: ae, lambda k: disc, SGD, SGD)(jax.random.key(0))
    for step in range(2):  # the same parameters, at steps 0 and 1
        state = state.replace(step=jnp.int32(step))
        batch, key = {"image": _images(4 + step)}, jax.random.key(5)
        new, m = _gan_step(1)(state, batch, key)
        lam, plain, grads, disc_grads, d_loss = _reference(state, batch, key)
        got = jax.tree.map(jnp.subtract, state.params, new.params)
        got_d = jax.tree.map(jnp.subtract, state.disc_params, new.disc_params)
        assert float(m["disc_active"]) == step
        if step == 0:
            _assert_trees_close(got, plain, 1e-4)
            kept = (new.disc_params, new.disc_opt_state)
            init = (state.disc_params, state.disc_opt_state)
            for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(init), strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert 1e-3 < float(lam) < 1e3
            np.testing.assert_allclose(m["adaptive_weight"], lam, rtol=1e-4)
            _assert_trees_close(got, grads, 1e-4)
            _assert_trees_close(got_d, disc_grads, 1e-4)
            np.testing.assert_allclose(m["d_loss"], d_loss, rtol=1e-5)


@jax.jit
def _reference(state, batch, key):
    """(lambda, grad of the VAE loss, grad of L_G, grad of L_D, L_D) at this state."""
    k_examples, _ = jax.random.split(jax.random.fold_in(key, state.step))
    keys = example_keys(k_examples, jnp.arange(4))
    terms = make_vae_terms_fn(_encode, _decode, reconstruction="l2")

    def losses(p):  # [mean nll, mean KL, generator loss g]
        t = terms(p, batch, keys)
        g = -jnp.mean(_disc(state.disc_params, t.reconstructions))
        return jnp.stack([jnp.mean(t.nll), jnp.mean(t.kl), g])

    jac = jax.jacrev(losses)(state.params)
    nll, kl, g = (jax.tree.map(lambda j, i=i: j[i], jac) for i in range(3))
    ratio = jnp.linalg.norm(nll["decoder"]["conv_out"]["kernel"]) / (
        jnp.linalg.norm(g["decoder"]["conv_out"]["kernel"]) + 1e-4
    )
    lam = DISC_W * jnp.clip(ratio, 0, 1e4)
    vae = jax.tree.map(lambda a, b: a + KL_W * b, nll, kl)
    total = jax.tree.map(lambda a, b: a + lam * b, vae, g)
    rec = terms(state.params, batch, keys).reconstructions

    def d_loss(dp):
        return jnp.mean(hinge_discriminator_loss(_disc(dp, batch["image"]), _disc(dp, rec)))

    loss_d, disc_grads = jax.value_and_grad(d_loss)(state.disc_params)
    return lam, vae, total, disc_grads, loss_d


def _assert_trees_close(a, b, rtol):
    """Leaf by leaf, to rtol of the largest value in the whole tree (float32 sums in another
    order differ by about 1e-7 of the largest term)."""
    scale = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def test_patch_discriminator_layout():
    """pix2pix's 3-layer PatchGAN on 3-channel 32x32 images: 2x2 patches of logits and the
    parameter count of its layers (4x4 kernels; no bias where batch norm follows)."""
    disc = PatchDiscriminator()
    x = jnp.zeros((2, 32, 32, 3))
    params = jax.eval_shape(lambda: disc.init(jax.random.key(0), x))["params"]
    out = jax.eval_shape(lambda p: disc.apply({"params": p}, x), params)
    assert out.shape == (2, 2, 2, 1)
    widths = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    kernels = sum(16 * a * b for a, b in widths)
    count = kernels + 64 + 1 + 2 * (128 + 256 + 512)  # conv biases, batch-norm scale and bias
    assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == count
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        PatchDiscriminator(num_layers=0)


def test_adversarial_state_resumes_bit_identically(tmp_path):
    """Both parameter sets and optimizer states checkpoint and restore (sharded over 8
    devices): 1 step + resume + 1 step (the discriminator's first) ends where 2 uninterrupted
    steps end."""
    adam = optax.adam(1e-2)
    mesh = make_mesh()
    ae, disc = _init()
    init = make_adversarial_init_fn(lambda k: ae, lambda k: disc, adam, adam)
    terms = make_vae_terms_fn(_encode, _decode)
    step = make_vae_gan_train_step(terms, _disc, adam, adam, last_layer=LAST, disc_start=1)

    def run(workdir, num_steps):
        state, shardings = init_sharded_state(init, jax.random.key(0), mesh)
        assert isinstance(state, AdversarialTrainState)
        data = _Batches()
        with Checkpointer(workdir, async_save=False) as ckpt:
            out = train_loop(
                jit_train_step(step, mesh, shardings),
                state,
                data,
                num_steps=num_steps,
                key=jax.random.key(7),
                checkpointer=ckpt,
                save_every=1,
                log_every=1,
                put_batch=lambda b: sh.global_batch(b, mesh),
            )
        return jax.device_get(out.state)

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 2)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.step) == 2 and resumed.disc_opt_state[0].count == 1


class _Batches:
    """Deterministic batches by position, with get_state / set_state."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {"image": _images(100 + self.position, b=8)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]
