"""SDXL: text-to-image and image-to-image pipelines (diffusers' ``StableDiffusionXLPipeline``
and ``StableDiffusionXLImg2ImgPipeline``).

Two text encoders: their penultimate hidden states (``clip_skip`` moves further back) are
concatenated into the cross-attention context and the second one's projected pooled output
is the U-Net's ``text_embeds``; ``time_ids`` are (original_size, crops_coords_top_left,
target_size), or with ``requires_aesthetics_score`` (the refiner) (original_size, crops,
aesthetic_score). With ``force_zeros_for_empty_prompt`` (the default) and no negative prompt,
the negative conditions are zeros. Latents are normalised with the VAE's latents_mean /
latents_std when its config has them, else with its scaling factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.pipelines import images as images_lib
from jaxdiff.pipelines import program
from jaxdiff.pipelines.base import DiffusionPipeline
from jaxdiff.pipelines.stable_diffusion import Prompt

Size = tuple[int, int]


class _SDXLText(DiffusionPipeline):
    sdxl = True

    def _text(self, prompt, negative_prompt, prompt_2, negative_prompt_2, repeats: int) -> dict:
        prompts = images_lib.as_list(prompt, "prompt")
        if not prompts:
            raise ValueError("prompt: give at least one prompt.")
        if repeats < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {repeats}.")
        n = len(prompts)
        prompts_2 = images_lib.as_list(prompt_2, "prompt_2") or prompts
        if len(prompts_2) != n:
            raise ValueError(f"prompt_2 has {len(prompts_2)} entries for {n} prompt(s).")
        zero = negative_prompt is None and bool(
            self.models.settings.get("force_zeros_for_empty_prompt", True)
        )
        neg = self._negatives(
            images_lib.as_list(negative_prompt, "negative_prompt"), n, "negative_prompt"
        )
        neg_2 = images_lib.as_list(negative_prompt_2, "negative_prompt_2")
        neg_2 = self._negatives(neg_2, n, "negative_prompt_2") if neg_2 else neg
        rows = [self._tokens(0, prompts), self._tokens(1, prompts_2)]
        neg_rows = [self._tokens(0, neg), self._tokens(1, neg_2)]
        return {
            "ids": tuple(np.repeat(r, repeats, 0) for r in rows),
            "neg_ids": tuple(np.repeat(r, repeats, 0) for r in neg_rows),
            "zero_negative": np.full(n * repeats, float(zero), np.float32),
        }

    def _finish(
        self,
        batch,
        *,
        seed,
        latents,
        shape,
        time_ids,
        neg_time_ids,
        guidance_scale,
        guidance_rescale,
    ) -> dict:
        self._check_time_ids(len(time_ids))
        count = len(batch["ids"][0])
        batch["seed"], batch["index"] = self._seeds(seed, count)
        batch["latents"] = self._noise(
            latents, program.NOISE, shape, batch["seed"], batch["index"], "latents"
        )
        batch["time_ids"] = np.tile(np.asarray(time_ids, np.float32), (count, 1))
        batch["neg_time_ids"] = np.tile(np.asarray(neg_time_ids, np.float32), (count, 1))
        self._guidance(batch, count, guidance_scale, guidance_rescale)
        return batch

    def _check_time_ids(self, n: int) -> None:
        unet, proj = self.models.unet, self.models.text_encoders[1].projection_dim
        if unet.addition_embed_type != "text_time":
            raise ValueError("SDXL pipelines need a U-Net with addition_embed_type='text_time'.")
        passed = unet.addition_time_embed_dim * n + proj
        if passed != unet.addition_embed_dim:
            raise ValueError(
                f"the U-Net expects an added embedding of width {unet.addition_embed_dim} but "
                f"{n} time ids x {unet.addition_time_embed_dim} + projection_dim {proj} = "
                f"{passed} (requires_aesthetics_score="
                f"{self.models.settings.get('requires_aesthetics_score')})."
            )

    def _latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        images_lib.check_size(height, width, *self.size_factors)
        f = self.models.vae.downsampling_factor
        return height // f, width // f, self.models.vae.latent_channels


class StableDiffusionXLPipeline(_SDXLText):
    """SDXL text-to-image (see the module docstring)."""

    diffusers_class = "StableDiffusionXLPipeline"

    def __call__(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None = None,
        *,
        prompt_2: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_inference_steps: int = 50,
        guidance_scale: Any = 5.0,
        guidance_rescale: Any = 0.0,
        height: int | None = None,
        width: int | None = None,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        latents: np.ndarray | None = None,
        eta: float | None = None,
        output_type: str = "np",
        clip_skip: int | None = None,
    ):
        """Generate images from prompts; arguments as `StableDiffusionPipeline`, plus:

        Args:
          prompt_2 / negative_prompt_2: the second tokenizer's prompts (default: the first's).
          original_size / crops_coords_top_left / target_size: SDXL's size conditioning
            (defaults (height, width), (0, 0), (height, width)); the negative_* ones apply
            to the negative conditions when both negative sizes are given.
        """
        self._steps(num_inference_steps)
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        shape = self._latent_shape(height, width)
        batch = self._text(
            prompt, negative_prompt, prompt_2, negative_prompt_2, num_images_per_prompt
        )
        time_ids = (
            *(original_size or (height, width)),
            *crops_coords_top_left,
            *(target_size or (height, width)),
        )
        neg_time_ids = time_ids
        if negative_original_size is not None and negative_target_size is not None:
            neg_time_ids = (
                *negative_original_size,
                *negative_crops_coords_top_left,
                *negative_target_size,
            )
        batch = self._finish(
            batch,
            seed=seed,
            latents=latents,
            shape=shape,
            time_ids=time_ids,
            neg_time_ids=neg_time_ids,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        return self._run(
            batch,
            num_steps=num_inference_steps,
            clip_skip=clip_skip,
            eta=eta,
            output_type=output_type,
        )


class StableDiffusionXLImg2ImgPipeline(_SDXLText):
    """SDXL image-to-image: the image is encoded, noised to ``strength`` and denoised."""

    diffusers_class = "StableDiffusionXLImg2ImgPipeline"
    task = "image"

    def __call__(
        self,
        prompt: Prompt,
        image: Any,
        negative_prompt: Prompt | None = None,
        *,
        prompt_2: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        strength: float = 0.3,
        num_inference_steps: int = 50,
        guidance_scale: Any = 5.0,
        guidance_rescale: Any = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        latents: np.ndarray | None = None,
        image_noise: np.ndarray | None = None,
        eta: float | None = None,
        output_type: str = "np",
        clip_skip: int | None = None,
    ):
        """Transform images; arguments as `StableDiffusionXLPipeline` and
        `StableDiffusionImg2ImgPipeline`, plus the refiner's aesthetic scores (used when the
        pipeline's ``requires_aesthetics_score`` is set)."""
        start = self._steps(num_inference_steps, strength)
        pixels = images_lib.load_images(image)
        height, width = pixels.shape[1:3]
        shape = self._latent_shape(height, width)
        batch = self._text(
            prompt, negative_prompt, prompt_2, negative_prompt_2, num_images_per_prompt
        )
        count = len(batch["ids"][0])
        prompts = count // num_images_per_prompt
        batch["image"] = images_lib.per_image(pixels, prompts, num_images_per_prompt, "image")
        batch["image"] = batch["image"] * 2.0 - 1.0
        original = original_size or (height, width)
        target = target_size or (height, width)
        neg_original = negative_original_size or original
        neg_target = negative_target_size or target
        if self.models.settings.get("requires_aesthetics_score"):
            time_ids = (*original, *crops_coords_top_left, aesthetic_score)
            neg_time_ids = (
                *neg_original,
                *negative_crops_coords_top_left,
                negative_aesthetic_score,
            )
        else:  # diffusers pairs the negative sizes with the positive crop here
            time_ids = (*original, *crops_coords_top_left, *target)
            neg_time_ids = (*neg_original, *crops_coords_top_left, *neg_target)
        batch = self._finish(
            batch,
            seed=seed,
            latents=latents,
            shape=shape,
            time_ids=time_ids,
            neg_time_ids=neg_time_ids,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        batch["image_noise"] = self._noise(
            image_noise, program.IMAGE_NOISE, shape, batch["seed"], batch["index"], "image_noise"
        )
        return self._run(
            batch,
            num_steps=num_inference_steps,
            start_step=start,
            clip_skip=clip_skip,
            eta=eta,
            output_type=output_type,
        )
