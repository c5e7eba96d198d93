"""Stable Diffusion pipelines (SD 1.x / 2.x, SDXL): diffusers-format directories in, images out.

``load_pipeline(path)`` picks the class from model_index.json; every class also has
``from_pretrained(path, dtype=..., devices=...)``, ``from_pipe(other)`` (same weights, no copy),
``save_pretrained(path)`` and ``set_sampler(name, **options)``. See
`jaxdiff.pipelines.program` for what is compiled and what is traced.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from jaxdiff.pipelines.base import DiffusionPipeline
from jaxdiff.pipelines.loading import PipelineModels, load_models, read_model_index
from jaxdiff.pipelines.schedulers import (
    SCHEDULERS,
    SamplerChoice,
    load_scheduler,
    sampler_from_config,
)
from jaxdiff.pipelines.stable_diffusion import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from jaxdiff.pipelines.stable_diffusion_xl import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

# diffusers' pipeline class names (model_index.json's _class_name) -> jaxdiff classes.
PIPELINES = {
    cls.diffusers_class: cls
    for cls in (
        StableDiffusionPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLPipeline,
        StableDiffusionXLImg2ImgPipeline,
    )
}


def load_pipeline(
    path: str | os.PathLike, *, dtype: Any = jnp.float32, devices=None
) -> DiffusionPipeline:
    """Load a diffusers pipeline directory as the jaxdiff class its model_index.json names.

    Args:
      path: the directory.
      dtype: model weights and compute dtype (the sampler maths stays float32).
      devices: devices to split batches over (default: all local devices).

    Raises:
      FileNotFoundError: when model_index.json or a component is missing (named).
      ValueError: for a pipeline class jaxdiff does not have (listing those it has).
    """
    index = read_model_index(path)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise ValueError(
            f"{os.path.join(os.fspath(path), 'model_index.json')}: pipeline class {name!r} is "
            f"not supported; supported: {', '.join(sorted(PIPELINES))}."
        )
    return PIPELINES[name].from_pretrained(path, dtype=dtype, devices=devices)


__all__ = [
    "PIPELINES",
    "SCHEDULERS",
    "DiffusionPipeline",
    "PipelineModels",
    "SamplerChoice",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "load_models",
    "load_pipeline",
    "load_scheduler",
    "sampler_from_config",
]
