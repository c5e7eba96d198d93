"""Sampling an unconditional workdir with classifier guidance (Dhariwal & Nichol 2021): the
model's score plus s * grad log p(y | x_t) of a noisy classifier of a ``task="classifier"``
workdir, towards the requested classes (``sample.py --classifier_workdir``)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import jaxdiff
from jaxdiff import models, training
from jaxdiff.experiment.sampling import (
    Generator,
    model_fn_for_sampling,
    sampler_options,
    sampler_prediction_type,
)


class ClassifierGuidedGenerator(Generator):
    """A :class:`Generator` of an unconditional model guided by a noisy classifier.

    Its classes are the classifier's; :meth:`Generator.sample`'s ``labels`` are the target
    classes (default 0, 1, 2, ... cycling) and its ``guidance_scale`` is the classifier scale
    s (a traced value: changing it never recompiles; 0 samples the model unguided).

    Args:
      generator: the unconditional pixel-space model (e.g. from ``load_workdir``).
      classifier: the `NoisyClassifier`.
      classifier_params: its parameters.
      classifier_schedule: the schedule it was trained on; it must be the model's.
    """

    def __init__(
        self,
        generator: Generator,
        classifier: models.NoisyClassifier,
        classifier_params: Any,
        classifier_schedule: Any,
    ):
        check_guidable(generator, classifier_schedule)
        super().__init__(
            generator.model, generator.params, generator.schedule, **generator.fields()
        )
        self.classifier, self.classifier_params = classifier, classifier_params

    @property
    def num_classes(self) -> int:
        """The classifier's classes (the targets of guidance)."""
        return int(self.classifier.num_outputs)

    def _check_labels(self, labels: np.ndarray | None, guidance_scale: float) -> None:
        if not guidance_scale >= 0:
            raise ValueError(f"The classifier scale must be >= 0; got {guidance_scale}.")
        if labels is None:
            return
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"Class label {int(bad[0])} is out of range; the classifier has classes "
                f"0..{self.num_classes - 1}."
            )

    def _make_generate_fn(self, sampler, num_steps, options, guided):
        del guided  # always guided by the classifier (scale 0: not at all)
        options = sampler_options(sampler, options, learned_variance=self.learned_variance)
        reads_variance = self.learned_variance and options.get("variance_type") == "learned_range"
        keep = None if reads_variance or not self.learned_variance else self.image_shape[-1]
        prediction_type = sampler_prediction_type(self.objective, self.prediction_type)
        log_prob = training.classifier_log_prob(self.classifier.apply, self.classifier_params)

        def generate(params, noise, keys, labels, scale, decoder_params):
            del decoder_params  # pixel space only
            model_fn = model_fn_for_sampling(
                self.model, params, objective=self.objective, image_channels=keep
            )
            fn = jaxdiff.classifier_guidance(
                model_fn,
                log_prob,
                schedule=self.schedule,
                prediction_type=prediction_type,
                learned_variance=reads_variance,
            )
            return jaxdiff.sample(
                fn, noise, schedule=self.schedule, sampler=sampler, num_steps=num_steps,
                prediction_type=prediction_type, key=keys,
                cond={"labels": labels, "gradient_scale": scale}, **options,
            )  # fmt: skip

        return jax.jit(generate)


def check_guidable(
    generator: Generator, classifier_schedule: Any, what: str = "classifier"
) -> None:
    """Refuse a model that a noisy classifier (or CLIP: ``what``) of ``classifier_schedule``
    cannot guide: a class- or text-conditional one, a latent one, an EDM one, another noise
    schedule."""
    name = what[0].upper() + what[1:]
    if generator.model.num_classes or type(generator) is not Generator:
        raise ValueError(
            f"{name} guidance here steers an unconditional model; this workdir's model is "
            "conditional (use --guidance_scale for its classifier-free guidance)."
        )
    if generator.decoder is not None:
        raise ValueError(
            f"{name} guidance needs a pixel-space model; this workdir is a latent diffusion "
            f"run (its x_t are latents, not the images the {what} read)."
        )
    if generator.objective != "diffusion":
        raise ValueError(
            f"{name} guidance needs a model trained with objective='diffusion'; this one "
            f"is {generator.objective!r}."
        )
    same = np.array_equal(
        np.asarray(generator.schedule.alphas_cumprod),
        np.asarray(classifier_schedule.alphas_cumprod),
    )
    if not same:
        raise ValueError(
            f"The {what} was trained on another noise schedule than the model; allowed: "
            f"a {what} run with the model's config.diffusion (beta schedule, timesteps)."
        )
