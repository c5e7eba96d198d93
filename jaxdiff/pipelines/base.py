"""What every Stable Diffusion pipeline class shares: loading, device placement, batching.

A pipeline holds a `PipelineModels` (modules, parameters, tokenizers, sampler) and a mesh of
devices. Its parameters are placed (replicated) on the mesh once; pipelines made from it with
``from_pipe`` share those arrays. A call turns prompts into token ids on the host, builds the
per-image arrays (noise from each image's seed, or given), pads the batch to a multiple of the
device count and runs the compiled `jaxdiff.pipelines.program.generate`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.pipelines import images as images_lib
from jaxdiff.pipelines import loading, program
from jaxdiff.pipelines.schedulers import SamplerChoice
from jaxdiff.samplers import grids

logger = logging.getLogger(__name__)
OUTPUT_TYPES = ("np", "pil", "latent")


class DiffusionPipeline:
    """Base class of the Stable Diffusion pipelines (see the module docstring).

    Attributes:
      models: the `PipelineModels` (shared, never copied, by pipelines made with from_pipe).
      mesh: the devices the batch is split over (one axis, "data").
    """

    diffusers_class: ClassVar[str] = ""
    sdxl: ClassVar[bool] = False
    task: ClassVar[str] = "text"
    unet_channels: ClassVar[tuple[int, ...]] = (4,)
    # Scheduler settings diffusers' SD pipelines overwrite when they are built (with a
    # deprecation warning): steps_offset -> 1, clip_sample -> False (inpainting: also
    # skip_prk_steps -> True), each only where the sampler has that option.
    scheduler_fixes: ClassVar[tuple[tuple[str, Any], ...]] = ()

    def __init__(self, models: loading.PipelineModels, *, devices: Sequence[Any] | None = None):
        """Place ``models`` on ``devices`` (default: every local device)."""
        self._check_models(models)
        self.models = self._fix_scheduler(models)
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.asarray(devices), (program.AXIS,))
        params = {
            "unet": models.unet_params,
            "vae": models.vae_params,
            "text": tuple(models.text_params),
        }
        self.params = jax.device_put(params, NamedSharding(self.mesh, P()))

    def _fix_scheduler(self, models: loading.PipelineModels) -> loading.PipelineModels:
        options = dict(models.scheduler.options)
        fixes = {k: v for k, v in self.scheduler_fixes if k in options and options[k] != v}
        if not fixes:
            return models
        logger.warning(
            "%s: scheduler settings %s replaced by %s, as diffusers' %s does.",
            type(self).__name__,
            {k: options[k] for k in fixes},
            fixes,
            self.diffusers_class,
        )
        choice = dataclasses.replace(
            models.scheduler, options=tuple(sorted({**options, **fixes}.items()))
        )
        return models.replace(scheduler=choice)

    def _check_models(self, models: loading.PipelineModels) -> None:
        name = type(self).__name__
        want = 2 if self.sdxl else 1
        if len(models.text_encoders) != want:
            raise ValueError(
                f"{name} needs {want} text encoder(s); these models have "
                f"{len(models.text_encoders)}."
            )
        if models.unet_in_channels not in self.unet_channels:
            hint = " (an inpainting U-Net: use an inpainting pipeline)" * (
                models.unet_in_channels == 9
            )
            raise ValueError(
                f"{name} needs a U-Net with {' or '.join(map(str, self.unet_channels))} input "
                f"channels; this one takes {models.unet_in_channels}{hint}."
            )

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, dtype: Any = jnp.float32, devices=None
    ) -> DiffusionPipeline:
        """Load a diffusers-format pipeline directory (see `jaxdiff.pipelines.loading`).

        Args:
          path: directory with model_index.json and the component folders.
          dtype: dtype of every model's weights and compute (jnp.bfloat16 halves memory);
            the sampler maths is float32 whatever it is.
          devices: devices to split batches over (default: every local device).
        """
        return cls(loading.load_models(path, sdxl=cls.sdxl, dtype=dtype), devices=devices)

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline) -> DiffusionPipeline:
        """A pipeline of this class on the same models, parameters and devices (no copy)."""
        new = cls.__new__(cls)
        new._check_models(pipe.models)
        new.models, new.mesh, new.params = new._fix_scheduler(pipe.models), pipe.mesh, pipe.params
        return new

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a diffusers-format directory that diffusers' from_pretrained loads."""
        loading.save_models(self.models, path, self.diffusers_class)

    @property
    def scheduler(self) -> SamplerChoice:
        """The sampler, its options, schedule and prediction type."""
        return self.models.scheduler

    def set_sampler(self, name: str, **options: Any) -> None:
        """Use sampler ``name`` (jaxdiff's names, diffusers' option names) from now on; the
        schedule and prediction type stay those of the checkpoint."""
        choice = self.models.scheduler.with_sampler(name, **options)
        self.models = self.models.replace(scheduler=choice)

    def set_scheduler(self, choice: SamplerChoice) -> None:
        """Use a `SamplerChoice` (e.g. `jaxdiff.pipelines.sampler_from_config(config)`)."""
        self.models = self.models.replace(scheduler=choice)

    # ------------------------------------------------------------------------------------
    # Helpers of __call__.

    @property
    def size_factors(self) -> tuple[int, int]:
        """(VAE, U-Net) downsampling factors: image sizes must be multiples of 8 and of their
        product."""
        return self.models.vae.downsampling_factor, 2 ** (len(self.models.unet.channels) - 1)

    def default_size(self) -> tuple[int, int]:
        """(height, width) of the U-Net's config ``sample_size`` times the VAE factor."""
        s = self.models.sample_size or 64
        s = (s, s) if isinstance(s, int) else tuple(s)
        f = self.models.vae.downsampling_factor
        return int(s[0]) * f, int(s[1]) * f

    def _tokens(self, index: int, prompts: list[str]) -> np.ndarray:
        return np.asarray(self.models.tokenizers[index](prompts), np.int32)

    def _negatives(self, negative: list[str] | None, n: int, what: str) -> list[str]:
        if negative is None:
            return [""] * n
        if len(negative) == 1:
            return negative * n
        if len(negative) != n:
            raise ValueError(f"{what} has {len(negative)} entries for {n} prompt(s).")
        return negative

    def _seeds(self, seed: int | Sequence[int], count: int) -> tuple[np.ndarray, np.ndarray]:
        """(seed, index) per image: image i of seed s uses (s, i); a list gives (s_i, 0)."""
        if isinstance(seed, int | np.integer):
            return np.full(count, seed, np.uint32), np.arange(count, dtype=np.uint32)
        seeds = np.asarray(list(seed), np.int64)
        if seeds.shape != (count,):
            raise ValueError(
                f"seed: got {seeds.size} seeds for {count} images (give one int "
                "or one seed per image)."
            )
        return seeds.astype(np.uint32), np.zeros(count, np.uint32)

    def _noise(self, given, stream: int, shape, seeds, index, what: str):
        """Given noise (checked) or noise drawn from each image's seed."""
        if given is not None:
            given = np.asarray(given, np.float32)
            if given.shape != (len(seeds), *shape):
                raise ValueError(
                    f"{what} must have shape {(len(seeds), *shape)} (NHWC); got {given.shape}."
                )
            return given
        return np.asarray(program.draw_noise(tuple(shape), stream, seeds, index))

    def _run(
        self,
        batch: dict,
        *,
        num_steps: int,
        start_step: int = 0,
        clip_skip=None,
        blend=None,
        eta: float | None = None,
        output_type: str = "np",
    ):
        """Run the compiled program on per-image host arrays; returns the output_type."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {OUTPUT_TYPES}.")
        prog = program.Program(
            unet=self.models.unet,
            vae=self.models.vae,
            text_encoders=self.models.text_encoders,
            sampler=self.scheduler,
            num_steps=num_steps,
            start_step=start_step,
            sdxl=self.sdxl,
            clip_skip=clip_skip,
            task=self.task,
            blend=blend,
            latent_stats=self.sdxl,
            output_type="latent" if output_type == "latent" else "np",
            mesh=self.mesh,
        )
        count = len(batch["seed"])
        pad = -count % self.mesh.size
        padded = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), batch)
        placed = jax.device_put(padded, NamedSharding(self.mesh, P(program.AXIS)))
        if eta is None:  # the sampler's own option (set_sampler("ddim", eta=...)), else 0
            eta = dict(self.scheduler.options).get("eta", 0.0)
        scalars = {"eta": jnp.float32(eta)}
        out = np.asarray(program.generate(prog, self.params, scalars, placed))[:count]
        return images_lib.to_pil(out) if output_type == "pil" else out

    def _steps(self, num_inference_steps: int, strength: float | None = None) -> int:
        """The start step for ``strength`` (0 without), validating both eagerly."""
        grids.check_num_steps(num_inference_steps)
        start = 0
        if strength is not None:
            start = grids.start_step_for_strength(num_inference_steps, strength)
        self.scheduler.loop(num_inference_steps, start_step=start)  # refuse bad grids now
        return start

    def _guidance(self, batch: dict, count: int, guidance_scale, guidance_rescale) -> None:
        for key, value in (("scale", guidance_scale), ("rescale", guidance_rescale)):
            arr = np.asarray(value, np.float32)
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != count):
                raise ValueError(f"guidance {key} must be a number or one per image ({count}).")
            batch[key] = np.broadcast_to(arr, (count,)).copy()
