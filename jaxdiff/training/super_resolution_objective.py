"""The training objective of a super-resolution stage of a cascade (noise conditioning
augmentation, Ho et al. 2021), as a :data:`jaxdiff.training.step.LossFn`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import losses
from jaxdiff.models.super_resolution import augment_low_res, downsample
from jaxdiff.training.step import LossFn


def make_super_resolution_loss_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    schedule: Any,
    factor: int,
    augment_levels: int,
    prediction_type: str = "epsilon",
    image_key: str = "image",
) -> LossFn:
    """Per-example denoising loss of the high-resolution image given its low-resolution view.

    For each example: the low-resolution view is ``downsample(image, factor)``, noised at a
    uniformly drawn augmentation level k in [0, augment_levels) (the model gets k as its
    class), and the usual diffusion loss is taken on the high-resolution image.

    Args:
      apply_fn: ``apply({"params": p}, x_t, t, low_res=..., labels=level, train=True, rngs=)``
        of a :class:`~jaxdiff.models.super_resolution.SuperResolutionUNet`.
      schedule: the discrete training schedule (also the augmentation's).
      factor: high / low resolution.
      augment_levels: the number of augmentation levels (level 0: clean low-res input).
      prediction_type: "epsilon", "sample" or "v_prediction".
      image_key: the batch entry of the high-resolution images.
    """
    if augment_levels < 1:
        raise ValueError(f"augment_levels must be >= 1; got {augment_levels}.")

    def loss_fn(params, batch, example_keys, batch_key):
        x0 = jnp.asarray(batch[image_key], jnp.float32)
        keys = jax.vmap(lambda k: jax.random.split(k, 4))(example_keys)
        t = jax.vmap(lambda k: losses.sample_timesteps(k, 1, schedule)[0])(keys[:, 0])
        noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(keys[:, 1])
        level = jax.vmap(lambda k: jax.random.randint(k, (), 0, augment_levels))(keys[:, 2])
        low = downsample(x0, factor)
        aug_noise = jax.vmap(lambda k: jax.random.normal(k, low.shape[1:]))(keys[:, 3])
        z = augment_low_res(low, level, aug_noise, schedule=schedule, augment_levels=augment_levels)

        def model_fn(x, time):
            return apply_fn({"params": params}, x, time, low_res=z, labels=level, train=True,
                            rngs={"dropout": batch_key}).astype(jnp.float32)  # fmt: skip

        loss = losses.diffusion_loss(
            model_fn, x0, keys[0, 0], schedule=schedule, prediction_type=prediction_type,
            t=t, noise=noise,
        )  # fmt: skip
        return loss, {}

    return loss_fn
