"""The training objective of a noisy classifier (for classifier guidance).

``loss_fn(params, batch, example_keys, batch_key) -> (cross-entropy [B], {"accuracy": [B]})``:
each example is noised to its own uniformly drawn timestep, x_t = alpha_t x_0 + sigma_t eps
(Dhariwal & Nichol 2021, Sec. 4: the classifier is trained on the same noise distribution the
sampler visits), and classified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdiff import diffusion
from jaxdiff.training.step import LossFn


def make_classifier_loss_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    schedule: Any,
    image_key: str = "image",
    label_key: str = "label",
    max_timestep: int | None = None,
) -> LossFn:
    """A per-example cross-entropy on noised images, for :func:`make_train_step`.

    Args:
      apply_fn: the classifier's ``apply`` (``apply({"params": p}, x_t, t, train=True,
        rngs={"dropout": k}) -> logits [B, K]``).
      schedule: the diffusion model's discrete training schedule (the noise the classifier
        must read).
      image_key, label_key: batch entries of the clean images and their classes.
      max_timestep: draw t in [0, max_timestep) only (default: every training timestep).
    """
    limit = schedule.num_train_timesteps if max_timestep is None else int(max_timestep)
    if not 1 <= limit <= schedule.num_train_timesteps:
        raise ValueError(
            f"max_timestep must be in [1, {schedule.num_train_timesteps}]; got {max_timestep}."
        )

    def loss_fn(params, batch, example_keys, batch_key):
        if label_key not in batch:
            raise ValueError(f"The classifier objective needs labels (batch[{label_key!r}]).")
        x0 = jnp.asarray(batch[image_key], jnp.float32)
        labels = jnp.asarray(batch[label_key], jnp.int32)
        keys = jax.vmap(jax.random.split)(example_keys)
        t = jax.vmap(lambda k: jax.random.randint(k, (), 0, limit))(keys[:, 0])
        noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(keys[:, 1])
        x_t = diffusion.q_sample(x0, noise, schedule.alpha(t), schedule.sigma(t))
        logits = apply_fn({"params": params}, x_t, t.astype(jnp.float32), train=True,
                          rngs={"dropout": batch_key})  # fmt: skip
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
        accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return loss, {"accuracy": accuracy}

    return loss_fn


def classifier_log_prob(
    apply_fn: Callable[..., jax.Array], params: Any
) -> Callable[..., jax.Array]:
    """``log_prob_fn(x_t, t, labels) -> log p(labels | x_t) [B]`` for classifier guidance."""

    def log_prob(x_t, t, labels, **_):
        logits = apply_fn({"params": params}, x_t, t)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]

    return log_prob
