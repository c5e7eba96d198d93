"""A small CLIP (Radford et al. 2021) trained from scratch, with a noise-aware image tower for
CLIP guidance of a diffusion model (GLIDE's "noised CLIP", Nichol et al. 2022, Sec. 3.3).

Image tower: the trunk of a :class:`~jaxdiff.models.NoisyClassifier` (a U-Net's down path
and middle, conditioned on the diffusion timestep t) whose head gives the embedding. Text
tower: a :class:`~jaxdiff.models.SmallTextEncoder`; its caption embedding is the mean of its
final hidden states over the caption's tokens, linearly projected. Both embeddings are
normalised to unit length, and ``logit_scale`` (learned, as CLIP's temperature) multiplies
their cosine similarities in the contrastive loss.

Trained on noised images x_t at uniformly drawn timesteps (t = 0 is the clean image), the
image tower reads the images a sampler visits, so the gradient of
``cosine(image_embeds(x_t, t), text_embeds(prompt))`` steers sampling towards the prompt
(:func:`jaxdiff.guidance.gradient_guidance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.classifier import NoisyClassifier
from jaxdiff.models.ops import Dense
from jaxdiff.models.patching import space_to_depth
from jaxdiff.models.small_text import SmallTextEncoder


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class SmallCLIP(nn.Module):
    """Two towers with a shared embedding space (see the module docstring).

    Attributes:
      image_tower: a `NoisyClassifier` whose ``num_outputs`` is ``embed_dim``.
      text_tower: a `SmallTextEncoder`.
      embed_dim: the width of the shared space.
      init_temperature: CLIP's initial softmax temperature (logit scale 1 / 0.07).
      max_logit_scale: the logit scale is clipped to this (CLIP: 100).
      patch_size: p > 1 runs the image tower on p x p pixel patches folded into channels
        (`jaxdiff.models.patching.space_to_depth`, as ViT's patch embedding; ~p^2 cheaper).
    """

    image_tower: NoisyClassifier
    text_tower: SmallTextEncoder
    embed_dim: int = 64
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    patch_size: int = 1

    def setup(self) -> None:
        if self.image_tower.num_outputs != self.embed_dim:
            raise ValueError(
                f"SmallCLIP: the image tower has num_outputs={self.image_tower.num_outputs}; "
                f"it must be embed_dim={self.embed_dim}."
            )
        self.text_projection = Dense(self.embed_dim, use_bias=False, name="text_projection")
        self.log_logit_scale = self.param(
            "log_logit_scale", lambda _: jnp.asarray(math.log(1.0 / self.init_temperature))
        )

    def image_embeds(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        """Unit embeddings [B, embed_dim] of the noised images x [B, H, W, C] at timesteps t."""
        if self.patch_size > 1:
            x = space_to_depth(x, self.patch_size)
        return _unit(self.image_tower(x, t, train=train))

    def text_embeds(self, input_ids: Any, train: bool = False) -> jax.Array:
        """Unit embeddings [B, embed_dim] of token ids [B, L] (padding ignored)."""
        ids = jnp.asarray(input_ids)
        hidden = self.text_tower(ids, train=train).last_hidden_state.astype(jnp.float32)
        mask = (ids != self.text_tower.pad_token_id).astype(jnp.float32)[..., None]
        pooled = jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return _unit(self.text_projection(pooled))

    def logit_scale(self) -> jax.Array:
        """exp(log_logit_scale), clipped to ``max_logit_scale``."""
        return jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)

    def __call__(
        self, x: jax.Array, t: jax.Array, input_ids: Any, train: bool = False
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(image embeddings [B, E], text embeddings [B, E], logit scale [])."""
        return (
            self.image_embeds(x, t, train),
            self.text_embeds(input_ids, train),
            self.logit_scale(),
        )


def clip_score_fn(module: SmallCLIP, params: Any) -> Callable[..., jax.Array]:
    """``score(x_t, t, text_embeds=[B, E]) -> [B]``: the scaled similarity logit_scale *
    cosine(image_embeds(x_t, t), text_embeds), the ``score_fn`` of CLIP guidance
    (:func:`jaxdiff.guidance.gradient_guidance`), differentiable in x_t. It is the logit of
    the prompt in CLIP's softmax over captions, so guidance scale 1 adds the gradient of
    log p(prompt | x_t) up to the normaliser. The prompts' embeddings come precomputed
    (``module.apply(..., method=SmallCLIP.text_embeds)``)."""

    def score(x: jax.Array, t: jax.Array, text_embeds: jax.Array, **_: Any) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        image = module.apply({"params": params}, x, t, method=SmallCLIP.image_embeds)
        scale = module.apply({"params": params}, method=SmallCLIP.logit_scale)
        return scale * jnp.sum(image * text_embeds.astype(jnp.float32), axis=-1)

    return score
