"""Command-line generation with a diffusers-format pipeline (what ``sample.py --pipeline_dir``
runs): text-to-image, image-to-image with ``image`` (+ ``strength``), inpainting with
``image`` + ``mask``. Writes ``image_<i>.png`` per image and ``images.npz`` (images in [0, 1],
prompts, seeds) to the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.pipelines import PIPELINES, load_models, loading
from jaxdiff.pipelines import images as images_lib

_TASKS = {  # (SDXL, task) -> class name
    (False, "text"): "StableDiffusionPipeline",
    (False, "image"): "StableDiffusionImg2ImgPipeline",
    (False, "inpaint"): "StableDiffusionInpaintPipeline",
    (True, "text"): "StableDiffusionXLPipeline",
    (True, "image"): "StableDiffusionXLImg2ImgPipeline",
}


def _read_image(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_mask(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def generate_images(
    pipeline_dir: str,
    prompts: Sequence[str],
    *,
    out: str,
    negative_prompt: str | None = None,
    image: str | None = None,
    mask: str | None = None,
    strength: float | None = None,
    guidance_scale: float | None = None,
    num_steps: int = 50,
    num_images_per_prompt: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    sampler: str | None = None,
    sampler_options: dict[str, Any] | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
) -> np.ndarray:
    """Generate images for ``prompts`` and write them to ``out`` (see the module docstring).

    Args:
      pipeline_dir: diffusers-format pipeline directory (model_index.json, ...).
      prompts: the prompts; each gives ``num_images_per_prompt`` images.
      out: output folder (created).
      negative_prompt: one negative prompt for all images.
      image / mask: paths of an input image (image-to-image) and a mask (inpainting).
      strength: image-to-image / inpainting strength (default 0.8 / 1.0; SDXL 0.3).
      guidance_scale: classifier-free guidance scale (default: the pipeline's).
      num_steps: sampler steps.
      num_images_per_prompt: images per prompt.
      batch_size: images per compiled call (the last call is padded, so it reuses the
        program).
      seed: image i (counting over all prompts) is drawn with seed ``seed + i`` (as the
        pipelines' per-image seeds), whatever the batch size.
      sampler / sampler_options: override the checkpoint's scheduler (jaxdiff names).
      height / width: text-to-image size (default: the U-Net's sample size x 8).
      progress: show a progress bar over the batches.
      devices: devices to split each batch over (default: every local device).

    Returns:
      The images, float32 [N, H, W, 3] in [0, 1].
    """
    from tqdm.auto import tqdm

    if mask is not None and image is None:
        raise ValueError("--mask needs --image (the image to inpaint).")
    if strength is not None and image is None:
        raise ValueError("--strength needs --image.")
    sdxl = "text_encoder_2" in loading.read_model_index(pipeline_dir)
    task = "inpaint" if mask is not None else "image" if image is not None else "text"
    if (sdxl, task) not in _TASKS:
        raise ValueError(f"{pipeline_dir}: inpainting is not available for SDXL pipelines.")
    pipe = PIPELINES[_TASKS[sdxl, task]](load_models(pipeline_dir, sdxl=sdxl), devices=devices)
    if sampler is not None:
        pipe.set_sampler(sampler, **(sampler_options or {}))
    elif sampler_options:  # options of the checkpoint's own sampler
        pipe.set_sampler(pipe.scheduler.name, **{**dict(pipe.scheduler.options), **sampler_options})
    kwargs: dict[str, Any] = dict(num_inference_steps=num_steps)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if strength is not None:
        kwargs["strength"] = strength
    if task == "text":
        kwargs.update(height=height, width=width)
    else:
        kwargs["image"] = _read_image(image)
        if mask is not None:
            kwargs["mask_image"] = _read_mask(mask)
    rows = [p for p in prompts for _ in range(num_images_per_prompt)]
    if not rows:
        raise ValueError("give at least one --prompt.")
    size = min(batch_size, len(rows))
    outputs = []
    bar = tqdm(total=len(rows), disable=not progress, desc=f"{pipe.scheduler.name} x{num_steps}")
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        pad = size - len(chunk)  # pad the last call to the same batch: no new compile
        seeds = [seed + i for i in range(start, start + size)]
        neg = None if negative_prompt is None else [negative_prompt] * size
        result = pipe(chunk + chunk[-1:] * pad, negative_prompt=neg, seed=seeds, **kwargs)
        outputs.append(result[: len(chunk)])
        bar.update(len(chunk))
    bar.close()
    images = np.concatenate(outputs)
    os.makedirs(out, exist_ok=True)
    for i, pil in enumerate(images_lib.to_pil(images)):
        pil.save(os.path.join(out, f"image_{i}.png"))
    np.savez(os.path.join(out, "images.npz"), images=images, prompts=np.asarray(rows), seed=seed)
    return images
