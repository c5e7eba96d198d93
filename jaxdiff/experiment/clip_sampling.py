"""Sampling an unconditional workdir with CLIP guidance: the model's score plus
s * grad_{x_t} [logit_scale * cosine(CLIP image(x_t, t), CLIP text(prompt))] of a noise-aware
CLIP of a ``task="clip"`` workdir (GLIDE's noised-CLIP guidance, Nichol et al. 2022, Sec.
3.3; ``sample.py --clip_workdir``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff.experiment.classifier_sampling import check_guidable
from jaxdiff.experiment.sampling import (
    Generator,
    model_fn_for_sampling,
    sampler_options,
    sampler_prediction_type,
)
from jaxdiff.models.small_clip import SmallCLIP, clip_score_fn


class ClipGuidedGenerator(Generator):
    """A :class:`Generator` of an unconditional model guided towards prompts by a CLIP.

    :meth:`sample` takes ``prompts`` (cycled to N) and its ``guidance_scale`` is the CLIP
    scale s (a traced value: changing it never recompiles; 0 samples the model unguided).

    Args:
      generator: the unconditional pixel-space model (e.g. from ``load_workdir``).
      clip: the `SmallCLIP`.
      clip_params: its parameters.
      clip_schedule: the schedule its image tower was trained on; it must be the model's.
      tokenizer: the CLIP's tokenizer (``tokenizer(prompts) -> ids``).
      x0_based: score the model's x_0 prediction at t = 0 instead of x_t at t (the gradient
        then flows through the model; see :func:`jaxdiff.gradient_guidance`).
    """

    def __init__(
        self,
        generator: Generator,
        clip: SmallCLIP,
        clip_params: Any,
        clip_schedule: Any,
        tokenizer: Any,
        *,
        x0_based: bool = False,
    ):
        check_guidable(generator, clip_schedule, what="CLIP")
        super().__init__(
            generator.model, generator.params, generator.schedule, **generator.fields()
        )
        self.run_sampler = generator.run_sampler
        self.clip, self.clip_params, self.tokenizer = clip, clip_params, tokenizer
        self.x0_based = x0_based
        self._text_embeds = jax.jit(
            lambda p, ids: clip.apply({"params": p}, ids, method=SmallCLIP.text_embeds)
        )

    def _check_labels(self, labels: np.ndarray | None, guidance_scale: float) -> None:
        if not guidance_scale >= 0:
            raise ValueError(f"The CLIP scale must be >= 0; got {guidance_scale}.")
        if labels is not None:
            raise ValueError("Class labels were given; CLIP guidance takes prompts.")

    def text_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        """The CLIP embeddings [N, E] of ``prompts`` (ValueError on words it does not know)."""
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"Prompts must be strings; got {bad[0]!r}.")
        ids = np.asarray(self.tokenizer(list(prompts)), np.int32)
        return np.asarray(self._text_embeds(self.clip_params, jnp.asarray(ids)))

    def sample(
        self,
        *,
        num_samples: int,
        sampler: str,
        num_steps: int,
        guidance_scale: float = 1.0,
        labels: Sequence[int] | None = None,
        prompts: Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        options: Mapping[str, Any] | None = None,
        progress: bool = True,
        params: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``num_samples`` images [N, H, W, C] in [-1, 1] guided towards ``prompts``
        (cycled to N); sample i depends only on (seed, i), its prompt and the scale. Returns
        the images and the prompt of each (a str array [N])."""

        options = dict(options or {})
        self.check(sampler=sampler, labels=None if labels is None else np.asarray(labels),
                   guidance_scale=guidance_scale, num_steps=num_steps,
                   options=options)  # fmt: skip
        if not prompts:
            raise ValueError("CLIP guidance needs at least one prompt (--prompt).")
        prompts = np.resize(np.array(list(prompts), dtype=object), num_samples)
        embeds = self.text_embeds(list(prompts))
        params = self.params if params is None else params
        generate = self._generate_fn(sampler, num_steps, options, True)
        scale = jnp.float32(guidance_scale)

        def draw(noise, keys, rows):
            return generate(params, noise, keys, jnp.asarray(embeds[rows]), scale, None)

        images = self._draw_batches(draw, num_samples, seed=seed, batch_size=batch_size,
                                    progress=progress, desc=f"{sampler} x{num_steps}")  # fmt: skip
        return images, prompts.astype(str)

    def _make_generate_fn(self, sampler, num_steps, options, guided):
        del guided  # always guided by the CLIP (scale 0: not at all)
        options = sampler_options(sampler, options, learned_variance=self.learned_variance)
        reads_variance = self.learned_variance and options.get("variance_type") == "learned_range"
        keep = None if reads_variance or not self.learned_variance else self.image_shape[-1]
        prediction_type = sampler_prediction_type(self.objective, self.prediction_type)
        score = clip_score_fn(self.clip, self.clip_params)
        if self.x0_based:  # the x_0 prediction is a clean image: read it at t = 0
            noisy_score = score

            def score(x0, t, text_embeds):
                return noisy_score(x0, jnp.zeros_like(t), text_embeds)

        def generate(params, noise, keys, text_embeds, scale, decoder_params):
            del decoder_params  # pixel space only
            model_fn = model_fn_for_sampling(
                self.model, params, objective=self.objective, image_channels=keep
            )
            fn = jaxdiff.gradient_guidance(
                model_fn, score, schedule=self.schedule, prediction_type=prediction_type,
                x0_based=self.x0_based, learned_variance=reads_variance,
                score_only=("text_embeds",),
            )  # fmt: skip
            return jaxdiff.sample(
                fn, noise, schedule=self.schedule, sampler=sampler, num_steps=num_steps,
                prediction_type=prediction_type, key=keys,
                cond={"text_embeds": text_embeds, "gradient_scale": scale}, **options,
            )  # fmt: skip

        return jax.jit(generate)
