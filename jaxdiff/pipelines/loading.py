"""diffusers pipeline directories (``model_index.json`` + one folder per component) <->
`PipelineModels`.

A directory written by diffusers' ``save_pretrained`` names its class and components in
model_index.json, e.g. ``"unet": ["diffusers", "UNet2DConditionModel"]``. Each component is
loaded by its jaxdiff converter (no torch): ``unet/`` and ``vae/`` in diffusers' layout,
``text_encoder/`` (+ ``text_encoder_2/``) in transformers' layout, ``tokenizer/`` (+
``tokenizer_2/``) through transformers' tokenizer classes, ``scheduler/`` as a jaxdiff sampler.
The safety checker, its feature extractor and an IP-adapter image encoder are not loaded
(jaxdiff runs none of them); a directory that names one gets a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax.numpy as jnp

from jaxdiff.models import convert, convert_text, convert_vae
from jaxdiff.models import state_dict as sd_lib
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.unet import UNet
from jaxdiff.pipelines import schedulers
from jaxdiff.text import tokenizer as tokenizer_lib

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
SD_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
SDXL_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                   "scheduler")  # fmt: skip
NOT_LOADED = ("safety_checker", "feature_extractor", "image_encoder")
# Non-component entries of model_index.json each family understands, with diffusers' defaults.
SD_SETTINGS = {"requires_safety_checker": True}
SDXL_SETTINGS = {"force_zeros_for_empty_prompt": True, "add_watermarker": None,
                 "requires_aesthetics_score": False}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PipelineModels:
    """The models, parameters, tokenizers and sampler of one Stable Diffusion pipeline.

    Pipelines built from the same `PipelineModels` share its parameter arrays (nothing is
    copied). ``text_encoders`` / ``text_params`` / ``tokenizers`` hold one entry (SD 1.x / 2.x)
    or two (SDXL: the CLIP encoder, then the one with a projection).

    Attributes:
      unet / unet_params: the denoiser and its parameters.
      vae / vae_params: the autoencoder and its parameters.
      text_encoders / text_params: text encoder modules and their parameters.
      tokenizers: `jaxdiff.text.Tokenizer` objects, one per text encoder.
      scheduler: the `SamplerChoice` read from scheduler_config.json (or set by the user).
      settings: the model_index.json settings (e.g. ``force_zeros_for_empty_prompt``).
      sample_size: the U-Net config's ``sample_size`` (latent pixels; sets the default
        image size), or None.
    """

    unet: UNet
    unet_params: Any
    vae: AutoencoderKL
    vae_params: Any
    text_encoders: tuple
    text_params: tuple
    tokenizers: tuple
    scheduler: schedulers.SamplerChoice
    settings: dict
    sample_size: Any = None

    @property
    def unet_in_channels(self) -> int:
        """Input channels of the U-Net (4, or 9 for inpainting U-Nets)."""
        return int(self.unet_params["conv_in"]["kernel"].shape[2])

    def replace(self, **changes: Any) -> PipelineModels:
        """A copy with some fields replaced (the others, parameters included, shared)."""
        return dataclasses.replace(self, **changes)


def read_model_index(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed model_index.json of a pipeline directory.

    Raises:
      FileNotFoundError: when the directory or its model_index.json is missing.
    """
    file = os.path.join(os.fspath(path), MODEL_INDEX)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file}: no such file (a diffusers pipeline directory has a model_index.json)."
        )
    with open(file) as f:
        return json.load(f)


def _split(index: dict[str, Any], components: tuple[str, ...], settings: dict, source: str):
    """(component -> [library, class], settings) of a model index, checked."""
    found, values, unknown = {}, dict(settings), []
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if key in components or key in NOT_LOADED:
            found[key] = value
        elif key in settings:
            values[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: unknown entries {sorted(unknown)} for {index.get('_class_name')} "
            f"(components: {list(components)}; settings: {sorted(settings)})."
        )
    missing = [c for c in components if not (isinstance(found.get(c), list) and found[c][-1])]
    if missing:
        raise ValueError(f"{source}: the pipeline has no component {missing} (needed: "
                         f"{list(components)}).")  # fmt: skip
    for key in NOT_LOADED:
        if isinstance(found.get(key), list) and found[key][-1]:
            logger.warning("%s: component %r (%s) is not loaded: jaxdiff pipelines run no "
                           "safety checker, feature extractor or image encoder.",
                           source, key, found[key][-1])  # fmt: skip
    return found, values


def _component_dir(path: str, name: str) -> str:
    sub = os.path.join(path, name)
    if not os.path.isdir(sub):
        raise FileNotFoundError(
            f"{sub}: missing component directory {name!r} named in {MODEL_INDEX}."
        )
    return sub


def load_models(path: str | os.PathLike, *, sdxl: bool, dtype: Any = jnp.float32) -> PipelineModels:
    """Load every component of a diffusers pipeline directory.

    Args:
      path: the directory (model_index.json, unet/, vae/, text_encoder/, ...).
      sdxl: whether it is an SDXL pipeline (two text encoders and tokenizers).
      dtype: compute and parameter dtype of every model (e.g. jnp.bfloat16); the sampler
        maths stays float32.

    Returns:
      `PipelineModels`.

    Raises:
      FileNotFoundError: naming a missing component (directory or files).
      ValueError: for entries or configs that cannot be reproduced (named).
    """
    path = os.fspath(path)
    index = read_model_index(path)
    source = os.path.join(path, MODEL_INDEX)
    names = SDXL_COMPONENTS if sdxl else SD_COMPONENTS
    found, settings = _split(index, names, SDXL_SETTINGS if sdxl else SD_SETTINGS, source)
    dirs = {c: _component_dir(path, c) for c in names}
    kw = dict(dtype=dtype, param_dtype=dtype)
    unet, unet_params = convert.load_diffusers_unet(dirs["unet"], **kw)
    vae, vae_params = convert_vae.load_diffusers_vae(dirs["vae"], **kw)
    encoders = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
    loaded = [convert_text.load_text_encoder(dirs[e], **kw) for e in encoders]
    toks = ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",)
    scheduler = schedulers.load_scheduler(dirs["scheduler"], found["scheduler"][-1])
    return PipelineModels(
        unet=unet, unet_params=unet_params, vae=vae, vae_params=vae_params,
        text_encoders=tuple(m for m, _ in loaded), text_params=tuple(p for _, p in loaded),
        tokenizers=tuple(tokenizer_lib.load_tokenizer(dirs[t]) for t in toks),
        scheduler=scheduler, settings=settings,
        sample_size=sd_lib.read_config(dirs["unet"]).get("sample_size"),
    )  # fmt: skip


def save_models(models: PipelineModels, path: str | os.PathLike, class_name: str) -> None:
    """Write ``models`` as a diffusers pipeline directory of class ``class_name``.

    Weights are written as float32 safetensors; diffusers' ``DiffusionPipeline.from_pretrained``
    and `load_models` read the result.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    sdxl = len(models.text_encoders) == 2
    unet_dir = os.path.join(path, "unet")
    convert.export_diffusers_unet(models.unet, models.unet_params, unet_dir)
    if models.sample_size is not None:
        config = sd_lib.read_config(unet_dir)
        with open(os.path.join(unet_dir, sd_lib.CONFIG_NAME), "w") as f:
            json.dump({**config, "sample_size": models.sample_size}, f, indent=2, sort_keys=True)
    convert_vae.export_diffusers_vae(models.vae, models.vae_params, os.path.join(path, "vae"))
    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": "0.39.0"}
    suffixes = ("", "_2") if sdxl else ("",)
    for suffix, module, params, tok in zip(
        suffixes, models.text_encoders, models.text_params, models.tokenizers, strict=True
    ):
        convert_text.export_text_encoder(
            module, params, os.path.join(path, "text_encoder" + suffix)
        )
        tok.backend.save_pretrained(os.path.join(path, "tokenizer" + suffix))
        index["text_encoder" + suffix] = ["transformers", type(module).__name__]
        index["tokenizer" + suffix] = ["transformers", type(tok.backend).__name__]
    schedulers.save_scheduler(models.scheduler, os.path.join(path, "scheduler"))
    index.update(
        unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"],
        scheduler=["diffusers", models.scheduler.to_config()["_class_name"]],
    )  # fmt: skip
    if sdxl:
        index.update(models.settings, feature_extractor=[None, None], image_encoder=[None, None])
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None],
                     image_encoder=[None, None], requires_safety_checker=False)  # fmt: skip
    with open(os.path.join(path, MODEL_INDEX), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
