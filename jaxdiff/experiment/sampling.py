"""Drawing images from a trained network: :class:`Generator` (model, parameters, schedule and
how to read the network's output), its jitted sampling functions, and the checks of sampler
arguments. Used by sample.py, the training run's sample grids and the benchmarks.

The only contact with the samplers package is its public API: ``jaxdiff.samplers.available()``,
``jaxdiff.SamplingLoop`` (in :func:`check_sampler`, to validate options before anything
compiles) and ``jaxdiff.sample``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import losses, models, samplers
from jaxdiff.diffusion import expand
from jaxdiff.experiment.per_sample_rng import per_sample_keys, per_sample_noise
from jaxdiff.guidance import classifier_free_guidance


def sampler_prediction_type(objective: str, prediction_type: str) -> str:
    """What the samplers are told the model predicts (EDM's denoiser returns x_0)."""
    return "sample" if objective == "edm" else prediction_type


def sampler_options(
    sampler: str, options: Mapping[str, Any], *, learned_variance: bool
) -> dict[str, Any]:
    """The options passed to ``jaxdiff.sample``: a learned-variance model samples "ddpm" with
    its own variance (``variance_type="learned_range"``) unless the options say otherwise."""
    options = dict(options)
    if learned_variance and sampler == "ddpm":
        options.setdefault("variance_type", "learned_range")
    return options


def check_sampler_name(sampler: str) -> None:
    """Raise a ValueError listing the samplers unless ``sampler`` is one of them."""
    if sampler not in samplers.available():
        raise ValueError(
            f"Unknown sampler {sampler!r}; available: {', '.join(samplers.available())}."
        )


def check_sampler(
    sampler: str,
    options: Mapping[str, Any],
    *,
    schedule: Any,
    num_steps: int,
    prediction_type: str,
) -> None:
    """Raise a ValueError now if ``jaxdiff.sample`` would refuse these arguments.

    The samplers own their option names and rules; preparing a ``jaxdiff.SamplingLoop`` (host
    work only, nothing compiles) is how this asks them. This is the single place in
    ``jaxdiff.experiment`` that depends on sampler options.
    """
    check_sampler_name(sampler)
    jaxdiff.SamplingLoop(
        sampler,
        schedule=schedule,
        num_steps=num_steps,
        prediction_type=prediction_type,
        **options,
    )


def model_fn_for_sampling(
    model: models.UNet,
    params: Any,
    *,
    objective: str,
    sigma_data: float = 0.5,
    image_channels: int | None = None,
) -> Callable[..., jax.Array]:
    """``model_fn(x_t, t, labels=None, **cond)`` in the samplers' variance-preserving contract
    (``cond``, e.g. a text ``context``, is passed on to ``model.apply``).

    For an EDM-trained model t is sigma and the function returns the preconditioned
    denoiser's x_0 ("sample" prediction) of x = x_t sqrt(1 + sigma^2) (the same wrapper as
    training, :func:`jaxdiff.losses.edm_denoiser`). With ``image_channels`` the output keeps
    only that many channels (drops a learned variance that the sampler does not read).
    """

    def apply(x, t, labels=None, **cond):
        out = model.apply({"params": params}, x, t, labels=labels, **cond).astype(jnp.float32)
        return out if image_channels is None else out[..., :image_channels]

    if objective != "edm":
        return apply

    def edm_fn(x_vp, sigma, labels=None, **cond):
        denoiser = losses.edm_denoiser(
            lambda x, c_noise: apply(x, c_noise, labels, **cond), sigma_data
        )
        return denoiser(x_vp * expand(jnp.sqrt(1.0 + sigma**2), x_vp), sigma)

    return edm_fn


class Generator:
    """A model, its sampling parameters and schedule, ready to draw images.

    Args:
      model: the network (a U-Net module).
      params: its parameters (e.g. the EMA parameters of a checkpoint); None when every
        :meth:`sample` call passes its own.
      schedule: the training schedule.
      objective: "diffusion" or "edm" (how the network's output is read).
      prediction_type: "epsilon", "sample" or "v_prediction" ("diffusion").
      sigma_data: EDM's sigma_data.
      image_shape: (H, W, C) of one image.
      learned_variance: the network also returns variance values (twice C channels).
      decoder: for a latent diffusion model, what turns the sampled latents (of
        ``image_shape``) into images: ``decoder.decode(decoder.params, latents)``
        (:class:`jaxdiff.experiment.autoencoder.LatentDecoder`); None: pixel space.

    Attributes:
      run_sampler: the training run's ``config.sample`` sampler and options
        (``{"sampler": ..., "options": {...}}``) when loaded from a workdir, else None;
        sample.py starts from these options when it samples with that sampler.
    """

    run_sampler: dict[str, Any] | None = None

    def __init__(
        self,
        model: models.UNet,
        params: Any,
        schedule: Any,
        *,
        objective: str,
        prediction_type: str,
        sigma_data: float,
        image_shape: Sequence[int],
        learned_variance: bool = False,
        decoder: Any = None,
    ):
        self.model, self.params, self.schedule = model, params, schedule
        self.decoder = decoder
        self.objective, self.prediction_type = objective, prediction_type
        self.sigma_data, self.image_shape = sigma_data, tuple(image_shape)
        self.learned_variance = learned_variance
        self._compiled: dict[tuple, Callable[..., jax.Array]] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unconditional model)."""
        return int(self.model.num_classes or 0)

    def fields(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this generator's model reading (a guided
        generator wraps an unconditional one with them)."""
        return dict(objective=self.objective, prediction_type=self.prediction_type,
                    sigma_data=self.sigma_data, image_shape=self.image_shape,
                    learned_variance=self.learned_variance)  # fmt: skip

    def check(
        self,
        *,
        sampler: str,
        labels: np.ndarray | None,
        guidance_scale: float,
        num_steps: int | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Refuse inputs that do not fit this model before anything compiles.

        Checks the sampler name, then the labels and guidance scale against the model, then
        (given ``num_steps``) the sampler's options and step count with this schedule.
        """
        check_sampler_name(sampler)
        self._check_labels(labels, guidance_scale)
        if num_steps is not None:
            check_sampler(
                sampler,
                sampler_options(sampler, options or {}, learned_variance=self.learned_variance),
                schedule=self.schedule,
                num_steps=num_steps,
                prediction_type=sampler_prediction_type(self.objective, self.prediction_type),
            )

    def _check_labels(self, labels: np.ndarray | None, guidance_scale: float) -> None:
        if labels is None:
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs a class-conditional model; this "
                    "model is unconditional (use guidance_scale=1)."
                )
            return
        if not self.num_classes:
            raise ValueError("Class labels were given but this model is unconditional.")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"Class label {int(bad[0])} is out of range; this model has classes "
                f"0..{self.num_classes - 1}."
            )

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
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Draw ``num_samples`` images [N, H, W, C] in [-1, 1] (and their labels); a latent
        model's samples are decoded (so their shape is the decoder's, not ``image_shape``).

        ``labels`` (cycled to N) selects classes of a conditional model (None: classes 0, 1,
        2, ... cycling; for an unconditional model, no labels). Sample i depends only on
        (seed, i), whatever the batch size. With a guidance scale other than 1, classifier-free
        guidance runs with the null class (``model.num_classes``) as the unconditional input.
        ``params`` replaces the generator's parameters for this call (same compiled function).
        ``prompts`` are refused: they are for a text-conditioned model
        (:class:`jaxdiff.experiment.text_sampling.TextGenerator`).
        """

        if prompts:
            raise ValueError(
                "Prompts were given but this model is not conditioned on text (it takes "
                f"{'class labels' if self.num_classes else 'no condition'})."
            )

        if labels is None and self.num_classes:
            labels = np.arange(num_samples) % self.num_classes
        elif labels is not None:
            labels = np.resize(np.asarray(labels, np.int32), num_samples)
        options = dict(options or {})
        if self.decoder is not None:
            options = self.decoder.sampler_options(sampler, options)
        self.check(
            sampler=sampler,
            labels=labels,
            guidance_scale=guidance_scale,
            num_steps=num_steps,
            options=options,
        )
        params = self.params if params is None else params
        if params is None:
            raise ValueError("This Generator has no parameters; pass params=.")
        guided = labels is not None and guidance_scale != 1.0
        generate = self._generate_fn(sampler, num_steps, options, guided)
        scale = jnp.float32(guidance_scale)
        decoder_params = None if self.decoder is None else self.decoder.params

        def draw(noise, keys, rows):
            lab = None if labels is None else jnp.asarray(labels[rows])
            return generate(params, noise, keys, lab, scale, decoder_params)

        images = self._draw_batches(draw, num_samples, seed=seed, batch_size=batch_size,
                                    progress=progress, desc=f"{sampler} x{num_steps}")  # fmt: skip
        return images, labels

    def _draw_batches(
        self,
        draw: Callable[[jax.Array, jax.Array, slice], jax.Array],
        num_samples: int,
        *,
        seed: int,
        batch_size: int,
        progress: bool,
        desc: str,
    ) -> np.ndarray:
        """``draw(noise, keys, rows)`` over batches of at most ``batch_size`` samples, with
        the per-sample keys and noise of samples ``rows`` (a slice), so that sample i depends
        only on (seed, i); the batches' images concatenated, with a progress bar."""
        from tqdm.auto import tqdm

        out = []
        bar = tqdm(total=num_samples, disable=not progress, desc=desc)
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            keys = per_sample_keys(seed, start, n)
            noise = per_sample_noise(keys, self.image_shape)
            out.append(np.asarray(draw(noise, keys, slice(start, start + n))))
            bar.update(n)
        bar.close()
        return np.concatenate(out)

    def _generate_fn(self, sampler, num_steps, options, guided):
        """The jitted ``generate(params, noise, keys, labels, scale)``, compiled once per
        (sampler, steps, options, guided) and batch shape."""
        cache_key = (sampler, num_steps, guided, repr(sorted(options.items())))
        if cache_key not in self._compiled:
            self._compiled[cache_key] = self._make_generate_fn(sampler, num_steps, options, guided)
        return self._compiled[cache_key]

    def _make_generate_fn(self, sampler, num_steps, options, guided):
        options = sampler_options(sampler, options, learned_variance=self.learned_variance)
        reads_variance = self.learned_variance and options.get("variance_type") == "learned_range"
        channels = self.image_shape[-1]
        keep = None if reads_variance or not self.learned_variance else channels
        null = jnp.full((1,), self.num_classes, jnp.int32)

        def generate(params, noise, keys, labels, guidance_scale, decoder_params):
            fn = model_fn_for_sampling(
                self.model,
                params,
                objective=self.objective,
                sigma_data=self.sigma_data,
                image_channels=keep,
            )
            cond = {} if labels is None else {"labels": labels}
            if guided:
                fn = classifier_free_guidance(
                    fn, uncond={"labels": null}, learned_variance=reads_variance
                )
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
            )
            return x if self.decoder is None else self.decoder.decode(decoder_params, x)

        return jax.jit(generate)
