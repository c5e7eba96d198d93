"""Latent diffusion training: a pixel train step wrapped to see the latents of a frozen VAE.

The state extends :class:`TrainState` with ``vae_params``, the frozen autoencoder's
parameters: an argument of the compiled step (never a constant folded into the program), read
by the step and never changed, and saved with every checkpoint, so that a run's checkpoints
alone decode its samples and a resumed run uses the very VAE it started with.

Each step turns the batch into latents before the wrapped step sees it: from the images
(``image_key``), encoded by the VAE in the step, or from posterior moments cached beforehand
(``moments_key``: mean and log-variance concatenated on the channel axis). Either way every
example gets a fresh posterior sample z = mean + exp(logvar / 2) eps from its own key
(``fold_in`` of the step and the global example index, as the train step's keys), scaled to
the diffusion model's latents; so caching changes where the encoder runs, not the latents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxdiff.training.state import TrainState
from jaxdiff.training.step import TrainStepFn, example_keys
from jaxdiff.training.vae_objective import EncodeFn, sample_posterior

PyTree = Any
LATENT_KEY_SALT = 0x1A7E
"""Folded into the run's key for the posterior samples (apart from the step's own keys)."""


@struct.dataclass
class LatentTrainState(TrainState):
    """A :class:`TrainState` of the diffusion model plus the frozen VAE it trains on.

    Attributes:
      vae_params: the autoencoder's parameters (not trained, no EMA).
    """

    vae_params: PyTree


def with_vae_params(state: TrainState, vae_params: PyTree) -> LatentTrainState:
    """``state`` with the frozen VAE's parameters added."""
    return LatentTrainState(
        step=state.step,
        params=state.params,
        ema_params=state.ema_params,
        opt_state=state.opt_state,
        vae_params=vae_params,
    )


def posterior_keys(key: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
    """The per-example keys of the posterior samples at ``step`` ([B] keys)."""
    k = jax.random.fold_in(jax.random.fold_in(key, LATENT_KEY_SALT), step)
    return example_keys(k, jnp.arange(batch_size, dtype=jnp.int32))


def make_latent_train_step(
    train_step: TrainStepFn,
    *,
    to_latents: Callable[[jax.Array], jax.Array],
    encode_fn: EncodeFn | None = None,
    image_key: str = "image",
    moments_key: str = "moments",
) -> TrainStepFn:
    """Wrap ``train_step`` (e.g. the diffusion step) to train on latents (module docstring).

    Args:
      train_step: ``(state, batch, key) -> (state, metrics)`` that reads x0 from
        ``batch[image_key]``; it gets the latents there.
      to_latents: unscaled VAE latents z -> the diffusion model's latents (scaling / shift,
        e.g. ``AutoencoderKL.to_latents``).
      encode_fn: ``encode(vae_params, images) -> posterior`` (``mean``, ``logvar``), used for
        batches without ``moments_key``; None: every batch must hold cached moments.
      image_key: where the batch holds images, and where the wrapped step finds latents.
      moments_key: where a batch holds cached moments [B, h, w, 2C] (mean, logvar).

    Returns:
      ``(LatentTrainState, batch, key) -> (state, metrics)``.
    """

    def step(state: LatentTrainState, batch: Any, key: jax.Array):
        batch = dict(batch)
        if moments_key in batch:
            mean, logvar = jnp.split(jnp.asarray(batch.pop(moments_key), jnp.float32), 2, -1)
        elif encode_fn is None:
            raise ValueError(f"The batch holds no {moments_key!r} and no encode_fn was given.")
        else:
            posterior = encode_fn(state.vae_params, jnp.asarray(batch[image_key], jnp.float32))
            mean, logvar = posterior.mean, posterior.logvar
        z = sample_posterior(mean, logvar, posterior_keys(key, state.step, mean.shape[0]))
        batch[image_key] = jax.lax.stop_gradient(to_latents(z))
        return train_step(state, batch, key)

    return step
