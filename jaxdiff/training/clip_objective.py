"""The contrastive objective of a noise-aware CLIP (for CLIP guidance).

``loss_fn(params, batch, example_keys, batch_key) -> (loss [B], {"accuracy": [B], ...})``:
each image is noised to its own uniformly drawn timestep (as a noisy classifier's,
:mod:`jaxdiff.training.classifier_objective`), both towers embed the batch, and the loss is
CLIP's symmetric cross-entropy over the B x B matrix of scaled cosine similarities (Radford
et al. 2021), image-to-text and text-to-image averaged. Examples whose captions mean the same
(equal ``batch["caption_group"]``, see :func:`caption_groups`) are all positives of each
other, with equal weight, so a batch holding "a 7 in the top left" twice does not push the
two apart.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.training.step import LossFn

CAPTION_GROUP = "caption_group"
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def canonical_caption(caption: str) -> str:
    """A caption lower-cased, with number words written as numerals and spaces collapsed
    ("a Seven above a 2" and "a 7 above a two" are the same)."""
    words = str(caption).lower().split()
    table = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)}
    return " ".join(table.get(w, w) for w in words)


def caption_groups(captions: Sequence[str]) -> np.ndarray:
    """int32 [B]: a 31-bit hash (CRC-32) of each :func:`canonical_caption`; equal captions
    get equal numbers (distinct ones collide with probability ~B^2 / 2^32)."""
    return np.asarray(
        [zlib.crc32(canonical_caption(c).encode()) & 0x7FFFFFFF for c in captions], np.int32
    )


class GroupCaptions:
    """A data-pipeline transform adding ``batch["caption_group"]`` (:func:`caption_groups`)."""

    def __init__(self, caption_key: str = "caption"):
        self.caption_key = caption_key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.caption_key not in batch:
            raise ValueError(f"A CLIP run needs captions; the batch has only {sorted(batch)}.")
        return {**batch, CAPTION_GROUP: caption_groups(batch[self.caption_key])}


def contrastive_loss(
    image: jax.Array, text: jax.Array, logit_scale: jax.Array, groups: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """CLIP's symmetric loss [B] and image-to-text top-1 accuracy [B] of unit embeddings
    image, text [B, E]; ``groups`` [B] marks examples that are positives of each other (None:
    each example is its own only positive)."""
    logits = logit_scale * (image @ text.T)
    b = logits.shape[0]
    same = jnp.eye(b, dtype=bool) if groups is None else groups[:, None] == groups[None, :]
    targets = same.astype(jnp.float32) / jnp.sum(same, axis=1, keepdims=True)
    image_to_text = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
    text_to_image = -jnp.sum(targets * jax.nn.log_softmax(logits.T, axis=1), axis=1)
    accuracy = same[jnp.arange(b), jnp.argmax(logits, axis=1)].astype(jnp.float32)
    return 0.5 * (image_to_text + text_to_image), accuracy


def make_clip_loss_fn(
    apply_fn: Callable[..., Any],
    *,
    schedule: Any,
    max_timestep: int | None = None,
    image_key: str = "image",
    ids_key: str = "input_ids",
) -> LossFn:
    """A per-example contrastive loss of a `SmallCLIP` on noised images.

    Args:
      apply_fn: the CLIP's ``apply`` (``apply({"params": p}, x_t, t, input_ids, train=True,
        rngs={"dropout": k}) -> (image [B, E], text [B, E], logit_scale)``).
      schedule: the diffusion model's discrete training schedule (the noise the image tower
        must read).
      max_timestep: draw t in [0, max_timestep) only (default: every training timestep).
      image_key, ids_key: batch entries of the clean images and the caption ids.
    """
    limit = schedule.num_train_timesteps if max_timestep is None else int(max_timestep)
    if not 1 <= limit <= schedule.num_train_timesteps:
        raise ValueError(
            f"max_timestep must be in [1, {schedule.num_train_timesteps}]; got {max_timestep}."
        )

    def loss_fn(params, batch, example_keys, batch_key):
        if ids_key not in batch:
            raise ValueError(f"The CLIP objective needs caption ids (batch[{ids_key!r}]).")
        x0 = jnp.asarray(batch[image_key], jnp.float32)
        keys = jax.vmap(jax.random.split)(example_keys)
        t = jax.vmap(lambda k: jax.random.randint(k, (), 0, limit))(keys[:, 0])
        noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(keys[:, 1])
        x_t = diffusion.q_sample(x0, noise, schedule.alpha(t), schedule.sigma(t))
        image, text, scale = apply_fn({"params": params}, x_t, t.astype(jnp.float32),
                                      batch[ids_key], train=True,
                                      rngs={"dropout": batch_key})  # fmt: skip
        groups = batch.get(CAPTION_GROUP)
        loss, accuracy = contrastive_loss(image, text, scale, groups)
        return loss, {"accuracy": accuracy, "logit_scale": jnp.broadcast_to(scale, loss.shape)}

    return loss_fn
