"""Drawing images from text prompts: :class:`TextGenerator`, the text counterpart of
:class:`jaxdiff.experiment.sampling.Generator` (same sampler checks and per-sample noise).

Prompts are tokenized on the host (unknown words raise the tokenizer's error, which lists the
vocabulary; a too-long prompt is cut with a warning), encoded once per batch, and the U-Net
reads the context at every sampler step. Classifier-free guidance uses the empty prompt's
context as the unconditional input, in one batched model call; the empty prompt itself is
allowed and gives unconditional samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff.experiment.sampling import (
    Generator,
    model_fn_for_sampling,
    sampler_options,
    sampler_prediction_type,
)
from jaxdiff.guidance import classifier_free_guidance


class TextGenerator(Generator):
    """A text-conditioned model (`jaxdiff.training.text_conditioning.TextConditionedModel`),
    its parameters and schedule, ready to draw images for prompts.

    Args:
      model: the text-conditioned model.
      params: its parameters ``{"unet": ..., "text_encoder": ...}`` (or None, see
        :meth:`sample`).
      schedule, objective, prediction_type, sigma_data, image_shape, learned_variance: as
        :class:`Generator`.
      prompts: the prompts drawn when :meth:`sample` is given none (e.g. the training run's
        sample grids); empty: the unconditional prompt "".
    """

    def __init__(self, model: Any, params: Any, schedule: Any, *, prompts: Sequence[str] = (),
                 **kwargs: Any):  # fmt: skip
        super().__init__(model, params, schedule, **kwargs)
        self.conditioner = model.conditioner.for_prompts()
        self.default_prompts = tuple(prompts) or ("",)

    def _check_labels(self, labels: np.ndarray | None, guidance_scale: float) -> None:
        if labels is not None:
            raise ValueError(
                "Class labels were given but this model is conditioned on text; give prompts."
            )

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """The id rows of ``prompts`` (ValueError listing the vocabulary on unknown words)."""
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"Prompts must be strings; got {bad[0]!r}.")
        return self.conditioner.tokenize(list(prompts))

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
        """Draw ``num_samples`` images [N, H, W, C] in [-1, 1] for ``prompts`` (cycled to N).

        Sample i depends only on (seed, i) and its prompt. ``prompts`` None draws the default
        prompts. Returns the images and the prompt of each (a str array [N]).
        """

        options = dict(options or {})
        self.check(sampler=sampler, labels=labels, guidance_scale=guidance_scale,
                   num_steps=num_steps, options=options)  # fmt: skip
        prompts = list(self.default_prompts if prompts is None else prompts)
        if not prompts:
            raise ValueError('Give at least one prompt ("" draws unconditional samples).')
        prompts = np.resize(np.array(prompts, dtype=object), num_samples)
        rows = self.tokenize(list(prompts))
        params = self.params if params is None else params
        if params is None:
            raise ValueError("This TextGenerator has no parameters; pass params=.")
        generate = self._generate_fn(sampler, num_steps, options, guidance_scale != 1.0)
        null = jnp.asarray(self.tokenize([""]))
        scale = jnp.float32(guidance_scale)
        decoder_params = None if self.decoder is None else self.decoder.params

        def draw(noise, keys, batch_rows):
            ids = jnp.asarray(rows[batch_rows])
            return generate(params, noise, keys, ids, null, scale, decoder_params)

        images = self._draw_batches(draw, num_samples, seed=seed, batch_size=batch_size,
                                    progress=progress, desc=f"{sampler} x{num_steps}")  # fmt: skip
        return images, prompts.astype(str)

    def _make_generate_fn(self, sampler, num_steps, options, guided):
        options = sampler_options(sampler, options, learned_variance=self.learned_variance)
        reads_variance = self.learned_variance and options.get("variance_type") == "learned_range"
        keep = None if reads_variance or not self.learned_variance else self.image_shape[-1]
        encode = self.conditioner.encode
        pooled_kwarg = self.model.pooled_kwarg

        def conditions(params, ids):
            context, pooled = encode(params.get("text_encoder"), ids)
            return {"context": context, **({"pooled": pooled} if pooled_kwarg else {})}

        def generate(params, noise, keys, ids, null_ids, guidance_scale, decoder_params):
            fn = model_fn_for_sampling(self.model, params, objective=self.objective,
                                       sigma_data=self.sigma_data, image_channels=keep)  # fmt: skip
            cond = conditions(params, ids)
            if guided:
                uncond = conditions(params, null_ids)
                fn = classifier_free_guidance(fn, uncond=uncond, learned_variance=reads_variance)
                cond["guidance_scale"] = guidance_scale
            x = jaxdiff.sample(
                fn,
                noise,
                schedule=self.schedule,
                sampler=sampler,
                num_steps=num_steps,
                prediction_type=sampler_prediction_type(self.objective, self.prediction_type),
                key=keys,
                cond=cond,
                **options,
            )  # latents of a latent model: decoded as Generator decodes them
            return x if self.decoder is None else self.decoder.decode(decoder_params, x)

        return jax.jit(generate)
