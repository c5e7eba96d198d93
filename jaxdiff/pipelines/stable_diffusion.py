"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image and inpainting pipelines.

Each call reproduces the diffusers pipeline of the same name (``output_type="np"``): the
negative prompt ("" when None) is encoded like the prompt, classifier-free guidance is on for
``guidance_scale > 1``, the initial noise is multiplied by the sampler's ``init_noise_sigma``,
and images are ``clip(decode(latents / scaling_factor) / 2 + 0.5, 0, 1)``. Randomness comes
from ``seed``: image i of seed s depends only on (s, i) (or pass one seed per image), never on
the batch it is drawn in or the number of devices. ``latents`` (and the VAE-sample noises of
the image pipelines) may be given instead, NHWC, to reproduce another implementation's draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.pipelines import images as images_lib
from jaxdiff.pipelines import program
from jaxdiff.pipelines.base import DiffusionPipeline

Prompt = str | Sequence[str]


class _SDText(DiffusionPipeline):
    """Prompt handling of the SD 1.x / 2.x pipelines (one CLIP encoder)."""

    scheduler_fixes = (("steps_offset", 1), ("clip_sample", False))

    def _text(self, prompt: Prompt, negative_prompt: Prompt | None, repeats: int) -> dict:
        prompts = images_lib.as_list(prompt, "prompt")
        if not prompts:
            raise ValueError("prompt: give at least one prompt.")
        negatives = self._negatives(
            images_lib.as_list(negative_prompt, "negative_prompt"), len(prompts), "negative_prompt"
        )
        if repeats < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {repeats}.")
        ids, neg = self._tokens(0, prompts), self._tokens(0, negatives)
        return {"ids": (np.repeat(ids, repeats, 0),), "neg_ids": (np.repeat(neg, repeats, 0),)}

    def _common(self, batch, *, seed, latents, shape, guidance_scale, guidance_rescale) -> dict:
        count = len(batch["ids"][0])
        batch["seed"], batch["index"] = self._seeds(seed, count)
        batch["latents"] = self._noise(
            latents, program.NOISE, shape, batch["seed"], batch["index"], "latents"
        )
        self._guidance(batch, count, guidance_scale, guidance_rescale)
        return batch

    def _latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        images_lib.check_size(height, width, *self.size_factors)
        f = self.models.vae.downsampling_factor
        return height // f, width // f, self.models.vae.latent_channels

    def _image_inputs(self, batch: dict, image, num_prompts: int, repeats: int, image_noise):
        """Adds ``image`` ([-1, 1]) and ``image_noise``; returns the latent shape."""
        pixels = images_lib.load_images(image)
        shape = self._latent_shape(*pixels.shape[1:3])
        pixels = images_lib.per_image(pixels, num_prompts, repeats, "image")
        batch["image"] = pixels * 2.0 - 1.0
        batch["image_noise"] = self._noise(
            image_noise, program.IMAGE_NOISE, shape, batch["seed"], batch["index"], "image_noise"
        )
        return shape


class StableDiffusionPipeline(_SDText):
    """Text-to-image (diffusers' ``StableDiffusionPipeline``)."""

    diffusers_class = "StableDiffusionPipeline"

    def __call__(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None = None,
        *,
        num_inference_steps: int = 50,
        guidance_scale: Any = 7.5,
        guidance_rescale: Any = 0.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        latents: np.ndarray | None = None,
        eta: float | None = None,
        output_type: str = "np",
        clip_skip: int | None = None,
    ):
        """Generate images from prompts.

        Args:
          prompt: one prompt or a list (longer than the tokenizer's 77 tokens: truncated with a
            warning).
          negative_prompt: what to guide away from: one for all prompts or one per prompt.
          num_inference_steps: sampler steps (static: a new value compiles a new program).
          guidance_scale: classifier-free guidance scale (scalar or one per image; traced).
          guidance_rescale: Lin et al. (2023) rescale phi (traced).
          height, width: image size, multiples of 8 (default: the U-Net's sample size x 8).
          num_images_per_prompt: images per prompt (images of a prompt are consecutive).
          seed: an int (image i uses (seed, i)) or one int per image.
          latents: the initial noise [B, H / 8, W / 8, 4] instead of drawing it.
          eta: DDIM's eta (traced; default: the sampler's option, else 0; ignored by other
            samplers, as in diffusers).
          output_type: "np" (float32 [B, H, W, 3] in [0, 1]), "pil" or "latent".
          clip_skip: use the text encoder's layer clip_skip + 1 from the end.

        Returns:
          The images (see ``output_type``).
        """
        batch = self._text(prompt, negative_prompt, num_images_per_prompt)
        default_h, default_w = self.default_size()
        shape = self._latent_shape(height or default_h, width or default_w)
        steps = num_inference_steps
        self._steps(steps)
        batch = self._common(
            batch,
            seed=seed,
            latents=latents,
            shape=shape,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        return self._run(
            batch, num_steps=steps, clip_skip=clip_skip, eta=eta, output_type=output_type
        )


class StableDiffusionImg2ImgPipeline(_SDText):
    """Image-to-image (diffusers' ``StableDiffusionImg2ImgPipeline``): the image is encoded
    (a posterior sample), noised to the level where ``strength`` starts the sampler, and
    denoised with the remaining ``int(num_inference_steps * strength)`` steps."""

    diffusers_class = "StableDiffusionImg2ImgPipeline"
    task = "image"

    def __call__(
        self,
        prompt: Prompt,
        image: Any,
        negative_prompt: Prompt | None = None,
        *,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: Any = 7.5,
        guidance_rescale: Any = 0.0,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        latents: np.ndarray | None = None,
        image_noise: np.ndarray | None = None,
        eta: float | None = None,
        output_type: str = "np",
        clip_skip: int | None = None,
    ):
        """Transform images guided by prompts (arguments as `StableDiffusionPipeline`).

        Args:
          image: the input image(s) (one for all prompts, one per prompt or one per output
            image; see `jaxdiff.pipelines.images`); its size is the output size.
          strength: in (0, 1]: how much noise is added (1: the image is fully replaced).
          latents: the noise added to the encoded image (diffusers' ``add_noise`` noise).
          image_noise: the VAE posterior sample's standard normal noise.
        """
        start = self._steps(num_inference_steps, strength)
        batch = self._text(prompt, negative_prompt, num_images_per_prompt)
        count = len(batch["ids"][0])
        batch["seed"], batch["index"] = self._seeds(seed, count)
        shape = self._image_inputs(
            batch, image, count // num_images_per_prompt, num_images_per_prompt, image_noise
        )
        batch = self._common(
            batch,
            seed=seed,
            latents=latents,
            shape=shape,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        return self._run(
            batch,
            num_steps=num_inference_steps,
            start_step=start,
            clip_skip=clip_skip,
            eta=eta,
            output_type=output_type,
        )


class StableDiffusionInpaintPipeline(_SDText):
    """Inpainting (diffusers' ``StableDiffusionInpaintPipeline``): repaint where the mask is 1.

    With a 9-channel inpainting U-Net the downsampled mask and the latents of the masked image
    are extra U-Net inputs; with an ordinary 4-channel U-Net the known region of the latents
    is reset after every step to the image noised to the next step's level (blending).
    """

    diffusers_class = "StableDiffusionInpaintPipeline"
    task = "inpaint"
    unet_channels = (4, 9)
    scheduler_fixes = (*_SDText.scheduler_fixes, ("skip_prk_steps", True))

    def __call__(
        self,
        prompt: Prompt,
        image: Any,
        mask_image: Any,
        negative_prompt: Prompt | None = None,
        *,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        guidance_scale: Any = 7.5,
        guidance_rescale: Any = 0.0,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
        latents: np.ndarray | None = None,
        image_noise: np.ndarray | None = None,
        masked_image_noise: np.ndarray | None = None,
        eta: float | None = None,
        output_type: str = "np",
        clip_skip: int | None = None,
    ):
        """Repaint the masked part of images (arguments as the image-to-image pipeline).

        Args:
          mask_image: mask(s) of the image's size, 1 (white) = repaint, binarised at 0.5.
          strength: in (0, 1]; 1 (the default) starts from pure noise.
          masked_image_noise: the noise of the masked image's VAE sample (9-channel U-Nets).
        """
        start = self._steps(num_inference_steps, strength)
        blend = None
        if self.models.unet_in_channels == 4:
            blend = program.blend_levels(self.scheduler, num_inference_steps, start)
        batch = self._text(prompt, negative_prompt, num_images_per_prompt)
        count = len(batch["ids"][0])
        batch["seed"], batch["index"] = self._seeds(seed, count)
        prompts = count // num_images_per_prompt
        shape = self._image_inputs(batch, image, prompts, num_images_per_prompt, image_noise)
        mask = images_lib.load_images(mask_image, channels=1, what="mask_image")
        if mask.shape[1:3] != batch["image"].shape[1:3]:
            raise ValueError(
                f"mask_image is {mask.shape[1]}x{mask.shape[2]} but image is "
                f"{batch['image'].shape[1]}x{batch['image'].shape[2]}."
            )
        mask = images_lib.per_image(mask, prompts, num_images_per_prompt, "mask_image")
        batch["mask"] = (mask >= 0.5).astype(np.float32)
        batch["masked_image_noise"] = self._noise(
            masked_image_noise,
            program.MASKED_IMAGE_NOISE,
            shape,
            batch["seed"],
            batch["index"],
            "masked_image_noise",
        )
        batch = self._common(
            batch,
            seed=seed,
            latents=latents,
            shape=shape,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        return self._run(
            batch,
            num_steps=num_inference_steps,
            start_step=start,
            blend=blend,
            clip_skip=clip_skip,
            eta=eta,
            output_type=output_type,
        )
