"""VAE training with a PatchGAN discriminator: two parameter sets, two optimizers, one pure step.

The state extends :class:`TrainState` (autoencoder ``params``, their ``ema_params`` and
``opt_state``) with the discriminator's parameters and optimizer state, so it is still one
pytree of arrays: sharded, donated, checkpointed and restored exactly like a diffusion run's.

One step of LDM's ``LPIPSWithDiscriminator`` (Rombach et al. 2022; Esser et al. 2021), with
f = 1 from step ``disc_start`` on and 0 before it:

- autoencoder: L_G = mean(nll) + w_kl mean(KL) + f * lambda * g with the generator loss
  g = -mean(D(x')) and LDM's adaptive weight
  lambda = disc_weight * clip(|grad_W nll| / (|grad_W g| + 1e-4), 0, 1e4) (not differentiated),
  where W is the decoder's last layer;
- discriminator: L_D = f * mean(hinge), hinge = (relu(1 - D(x)) + relu(1 + D(x'))) / 2 averaged
  over patches, on the same reconstructions x' (not differentiated). Before ``disc_start`` the
  discriminator and its optimizer state are left exactly as initialised.

Both updates use the parameters from before the step (a simultaneous update). The adaptive
weight takes batch means, so a step sees the whole batch (no micro-batch accumulation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxdiff.training.ema import EmaDecayFn, ema_update
from jaxdiff.training.state import TrainState, create_train_state
from jaxdiff.training.step import Metrics, TrainStepFn, batch_size_of, example_keys
from jaxdiff.training.vae_objective import VaeTerms

PyTree = Any
DiscFn = Callable[[PyTree, jax.Array], jax.Array]
"""``disc(disc_params, images [B, H, W, C]) -> patch logits [B, ...]``."""

ADAPTIVE_WEIGHT_MAX = 1e4


@struct.dataclass
class AdversarialTrainState(TrainState):
    """A :class:`TrainState` of the autoencoder plus its discriminator.

    Attributes:
      disc_params: the discriminator's parameters (no EMA).
      disc_opt_state: the optax state of the discriminator's optimizer.
    """

    disc_params: PyTree
    disc_opt_state: optax.OptState


def make_adversarial_init_fn(
    init_params: Callable[[jax.Array], PyTree],
    init_disc_params: Callable[[jax.Array], PyTree],
    optimizer: optax.GradientTransformation,
    disc_optimizer: optax.GradientTransformation,
) -> Callable[[jax.Array], AdversarialTrainState]:
    """A pure ``init(key) -> AdversarialTrainState`` (see :func:`jaxdiff.training.make_init_fn`).

    The autoencoder is initialised from ``fold_in(key, 0)``, the discriminator from
    ``fold_in(key, 1)``.
    """

    def init(key: jax.Array) -> AdversarialTrainState:
        base = create_train_state(init_params(jax.random.fold_in(key, 0)), optimizer)
        disc = init_disc_params(jax.random.fold_in(key, 1))
        return AdversarialTrainState(
            step=base.step,
            params=base.params,
            ema_params=base.ema_params,
            opt_state=base.opt_state,
            disc_params=disc,
            disc_opt_state=disc_optimizer.init(disc),
        )

    return init


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """(mean relu(1 - D(x)) + mean relu(1 + D(x'))) / 2 over each example's patches: [B]."""
    axes = tuple(range(1, logits_real.ndim))
    real = jnp.mean(jax.nn.relu(1.0 - logits_real), axis=axes)
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake), axis=axes)
    return 0.5 * (real + fake)


def adaptive_weight(nll_grad: jax.Array, g_grad: jax.Array, disc_weight: float) -> jax.Array:
    """LDM's lambda = disc_weight * clip(|nll_grad| / (|g_grad| + 1e-4), 0, 1e4)."""
    ratio = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
    return disc_weight * jax.lax.stop_gradient(jnp.clip(ratio, 0.0, ADAPTIVE_WEIGHT_MAX))


def _leaf(tree: PyTree, path: Sequence[str]) -> jax.Array:
    for name in path:
        tree = tree[name]
    return tree


def _check(disc_start: int, disc_weight: float, kl_weight: float) -> None:
    if not isinstance(disc_start, int) or disc_start < 0:
        raise ValueError(f"disc_start must be an int >= 0; got {disc_start!r}.")
    if not disc_weight >= 0 or not kl_weight >= 0:
        raise ValueError(f"disc_weight and kl_weight must be >= 0; got {disc_weight}, {kl_weight}.")


def make_vae_gan_train_step(
    terms_fn: Callable[[PyTree, Any, jax.Array], VaeTerms],
    disc_fn: DiscFn,
    optimizer: optax.GradientTransformation,
    disc_optimizer: optax.GradientTransformation,
    *,
    last_layer: Sequence[str],
    kl_weight: float = 1e-6,
    disc_start: int = 0,
    disc_weight: float = 0.5,
    ema_decay_fn: EmaDecayFn | None = None,
    learning_rate_fn: optax.Schedule | None = None,
) -> TrainStepFn:
    """The pure step ``(AdversarialTrainState, batch, key) -> (state, metrics)`` (module doc).

    Args:
      terms_fn: the autoencoder's forward pass and per-example terms
        (:func:`jaxdiff.training.vae_objective.make_vae_terms_fn`).
      disc_fn: see :data:`DiscFn`.
      optimizer: trains the autoencoder's ``params``.
      disc_optimizer: trains ``disc_params``.
      last_layer: path of the decoder's last weight in ``params`` (the W of the adaptive
        weight), e.g. ``("decoder", "conv_out", "kernel")``.
      kl_weight: w_kl.
      disc_start: the first step (``state.step``) with the adversarial terms.
      disc_weight: the factor of the adaptive weight (LDM's ``disc_weight``).
      ema_decay_fn: ``step -> decay`` of the autoencoder's EMA; None: EMA = params.
      learning_rate_fn: the schedule, only to report ``learning_rate``.

    Returns:
      The step. Metrics: ``loss`` (L_G), ``grad_norm``, ``ema_decay``, the means of the
      terms' aux values and ``kl``, ``g_loss``, ``d_loss`` (hinge, before f),
      ``adaptive_weight``, ``logits_real``, ``logits_fake``, ``disc_grad_norm``,
      ``disc_active`` and optionally ``learning_rate``.
    """
    _check(disc_start, disc_weight, kl_weight)
    last_layer = tuple(last_layer)

    def train_step(state: AdversarialTrainState, batch: Any, key: jax.Array):
        k_examples, _ = jax.random.split(jax.random.fold_in(key, state.step))
        keys = example_keys(k_examples, jnp.arange(batch_size_of(batch), dtype=jnp.int32))
        active = (state.step >= disc_start).astype(jnp.float32)
        grads, terms, metrics = _generator_grads(
            terms_fn, disc_fn, state, batch, keys, active, last_layer, kl_weight, disc_weight
        )
        disc_state, disc_metrics = _disc_update(
            state, terms.images, terms.reconstructions, active, disc_fn, disc_optimizer
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.zeros((), jnp.float32) if ema_decay_fn is None else ema_decay_fn(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_update(state.ema_params, params, decay),
            opt_state=opt_state,
            **disc_state,
        )
        metrics.update(grad_norm=optax.tree.norm(grads), ema_decay=decay, **disc_metrics)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        return new_state, metrics

    return train_step


def _generator_grads(terms_fn, disc_fn, state, batch, keys, active, last, kl_weight, disc_w):
    """(grads of L_G, the terms, metrics) from one forward pass of the autoencoder: its VJP
    is applied to three cotangents (nll alone, g alone, and L_G); of the first two only the
    last layer's entry is used, so XLA keeps just that part of their backward passes
    (measured: the step with the adaptive weight has 1.003x the flops, by XLA's cost analysis,
    of the same step with a constant weight; configs/digits_vae.py's VAE, batch 32)."""

    def forward(params):
        t = terms_fn(params, batch, keys)
        return (t.reconstructions, jnp.mean(t.nll), jnp.mean(t.kl)), t

    (x_rec, nll, kl), ae_vjp, terms = jax.vjp(forward, state.params, has_aux=True)
    g, g_vjp = jax.vjp(lambda rec: -jnp.mean(disc_fn(state.disc_params, rec)), x_rec)
    (g_cot,) = g_vjp(jnp.ones_like(g))
    zero, one = jnp.zeros_like(nll), jnp.ones_like(nll)
    (nll_grads,) = ae_vjp((jnp.zeros_like(x_rec), one, zero))
    (g_grads,) = ae_vjp((g_cot, zero, zero))
    lam = adaptive_weight(_leaf(nll_grads, last), _leaf(g_grads, last), disc_w)
    (grads,) = ae_vjp((active * lam * g_cot, one, jnp.full_like(kl, kl_weight)))
    metrics: Metrics = {
        "loss": nll + kl_weight * kl + active * lam * g,
        "kl": kl,
        "g_loss": g,
        "adaptive_weight": lam,
        **{name: jnp.mean(v) for name, v in terms.aux.items()},
    }
    return grads, terms, metrics


def _disc_update(state, images, x_rec, active, disc_fn, disc_optimizer):
    """The discriminator's hinge step; a no-op (state kept bit for bit) while inactive."""
    real, fake = jax.lax.stop_gradient(images), jax.lax.stop_gradient(x_rec)

    def loss_fn(disc_params):
        logits_real, logits_fake = disc_fn(disc_params, real), disc_fn(disc_params, fake)
        hinge = jnp.mean(hinge_discriminator_loss(logits_real, logits_fake))
        return active * hinge, (hinge, jnp.mean(logits_real), jnp.mean(logits_fake))

    (_, (hinge, lr_mean, lf_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.disc_params
    )
    updates, opt_state = disc_optimizer.update(grads, state.disc_opt_state, state.disc_params)
    params = optax.apply_updates(state.disc_params, updates)
    keep = active > 0

    def choose(new, old):
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)

    new = {
        "disc_params": choose(params, state.disc_params),
        "disc_opt_state": choose(opt_state, state.disc_opt_state),
    }
    metrics = {
        "d_loss": hinge,
        "logits_real": lr_mean,
        "logits_fake": lf_mean,
        "disc_grad_norm": optax.tree.norm(grads),
        "disc_active": active,
    }
    return new, metrics
