"""Import of transformers-format CLIP vision towers and two-tower CLIP models.

Extends `jaxdiff.models.convert_text` (which reads the text towers) to directories whose
``config.json`` names ``CLIPVisionModel``, ``CLIPVisionModelWithProjection`` or ``CLIPModel``
(e.g. ``openai/clip-vit-large-patch14``, the CLIP of CLIP score). Weights are read as there:
``model.safetensors``, shards, or ``pytorch_model.bin`` without executing pickle code.

Config fields that change the numbers are reproduced: vision ``hidden_size``,
``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_channels``,
``image_size``, ``patch_size``, ``hidden_act``, ``layer_norm_eps``, ``projection_dim``; for
``CLIPModel`` its ``text_config`` / ``vision_config`` (merged with the older
``text_config_dict`` / ``vision_config_dict`` as transformers merges them, missing fields taking
transformers' defaults) and ``projection_dim``. Keys: the jaxdiff path joined with dots as in
`convert_text` (``class_embedding`` and ``logit_scale`` keep their names, the patch convolution
is OIHW in PyTorch); a bare ``CLIPVisionModel`` is read with or without the ``vision_model.``
prefix; ``position_ids`` buffers are skipped.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff.models import convert_text
from jaxdiff.models.clip import (
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)
from jaxdiff.models.state_dict import from_torch, to_torch
from jaxdiff.models.text_ops import ACTIVATIONS

VISION_ARCHITECTURES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel")
ClipVision = CLIPVisionModel | CLIPModel
_VISION_FIELDS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
_KEEP_LEAF = ("class_embedding", "logit_scale")
_SKIPPED = re.compile(r"(^|\.)embeddings\.position_ids$")
_VISION_PREFIX = "vision_model."


def torch_key(path: tuple[str, ...]) -> str:
    """transformers state-dict key of a jaxdiff CLIP parameter path."""
    if path[-1] in _KEEP_LEAF:  # a bare parameter of its module, no ".weight"
        modules = convert_text.torch_key((*path[:-1], "bias")).split(".")[:-1]
        return ".".join([*modules, path[-1]])
    return convert_text.torch_key(path)


def _vision_from_config(config: dict, source: str, projection: bool, **kw: Any) -> CLIPVisionModel:
    fields = {k: config.get(k, default) for k, default in _VISION_FIELDS.items()}
    problems = []
    if fields["hidden_act"] not in ACTIVATIONS:
        problems.append(f"hidden_act {fields['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    if fields["hidden_size"] % fields["num_attention_heads"]:
        problems.append("hidden_size is not divisible by num_attention_heads")
    for name in ("image_size", "patch_size"):
        if not isinstance(fields[name], int):
            problems.append(f"{name} must be one integer (square images), got {fields[name]!r}")
    if not problems and fields["image_size"] % fields["patch_size"]:
        problems.append("image_size is not divisible by patch_size")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")
    if projection:
        proj = config.get("projection_dim", 512)
        return CLIPVisionModelWithProjection(**fields, projection_dim=proj, **kw)
    return CLIPVisionModel(**fields, **kw)


def _sub_config(config: dict, name: str) -> dict:
    merged = dict(config.get(f"{name}_config") or {})
    merged.update(config.get(f"{name}_config_dict") or {})
    return merged


def clip_from_config(
    config: dict[str, Any], source: str = "config", **overrides: Any
) -> ClipVision:
    """The jaxdiff module of a transformers CLIP vision / two-tower ``config.json`` (parsed).

    Args:
      config: the parsed config.json.
      source: name for error messages (e.g. the file).
      **overrides: extra module fields, e.g. ``dtype=jnp.bfloat16``.

    Raises:
      ValueError: for an architecture other than `VISION_ARCHITECTURES` or a config field that
        cannot be reproduced (named).
    """
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in VISION_ARCHITECTURES:
        raise ValueError(
            f"{source}: architectures {archs!r} is not one of {list(VISION_ARCHITECTURES)} (one "
            "entry; text towers load with jaxdiff.models.load_text_encoder)."
        )
    if config.get("quantization_config") is not None:
        raise ValueError(f"{source}: quantization_config is set; only plain weights can be loaded.")
    if archs[0] != "CLIPModel":
        return _vision_from_config(config, source, archs[0].endswith("Projection"), **overrides)
    text = dict(_sub_config(config, "text"), architectures=["CLIPTextModel"])
    text_model = convert_text.text_encoder_from_config(text, f"{source} text_config", **overrides)
    vision = _vision_from_config(_sub_config(config, "vision"), f"{source} vision_config", False,
                                 **overrides)  # fmt: skip
    return CLIPModel(text_model, vision, projection_dim=config.get("projection_dim", 512))


def param_shapes(module: ClipVision) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of a CLIP vision / two-tower module (no compute)."""
    vision = module.vision_config if isinstance(module, CLIPModel) else module
    s, c = vision.image_size, vision.num_channels
    pixels = jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
    if isinstance(module, CLIPModel):
        ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        shapes = jax.eval_shape(lambda p, i: module.init(jax.random.key(0), p, i), pixels, ids)
    else:
        shapes = jax.eval_shape(lambda p: module.init(jax.random.key(0), p), pixels)
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {p: tuple(v.shape) for p, v in flat.items()}


def params_from_state_dict(
    module: ClipVision, state_dict: dict[str, np.ndarray], source: str = "state dict"
) -> dict[str, Any]:
    """jaxdiff parameters (nested dict, float32) of a transformers CLIP state dict.

    Raises:
      ValueError: naming missing or unexpected keys and every shape mismatch.
    """
    state = {k: v for k, v in state_dict.items() if not _SKIPPED.search(k)}
    if type(module) is CLIPVisionModel:
        state = {k.removeprefix(_VISION_PREFIX): v for k, v in state.items()}
    shapes = param_shapes(module)
    wanted = {torch_key(p): p for p in shapes}
    problems = []
    if missing := sorted(set(wanted) - set(state)):
        problems.append(f"missing parameters {missing}")
    if unexpected := sorted(set(state) - set(wanted)):
        problems.append(f"unexpected parameters {unexpected}")
    flat = {}
    for key in sorted(set(wanted) & set(state)):
        path = wanted[key]
        value = from_torch(np.asarray(state[key], np.float32), path[-1])
        if value.shape != shapes[path]:
            need = to_torch(np.zeros(shapes[path], np.int8), path[-1]).shape
            problems.append(
                f"{key} has shape {tuple(np.shape(state[key]))}, the model needs {need}"
            )
        flat[path] = jnp.asarray(value)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")
    return traverse_util.unflatten_dict(flat)


def load_clip(path: str | os.PathLike, *, variant: str | None = None,
              **overrides: Any) -> tuple[ClipVision, dict]:  # fmt: skip
    """Load a transformers CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel.

    Args:
      path: directory written by transformers' ``save_pretrained`` (e.g. a copy of
        ``openai/clip-vit-large-patch14``).
      variant: weights variant, e.g. "fp16" for ``model.fp16.safetensors``.
      **overrides: extra module fields, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      (module, params): for a vision model ``module.apply({"params": params}, pixel_values)``
      gives a `VisionEncoderOutput`; for a `CLIPModel` use its ``image_embeds`` /
      ``text_embeds`` methods.

    Raises:
      FileNotFoundError: when config.json or the weights are missing.
      ValueError: for an unsupported architecture or config field, missing / unexpected
        parameters, or shape mismatches (each named).
    """
    path = os.fspath(path)
    file = os.path.join(path, convert_text.CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (a transformers checkpoint has one).")
    with open(file) as f:
        module = clip_from_config(json.load(f), file, **overrides)
    state, source = convert_text.read_state_dict(path, variant)
    return module, params_from_state_dict(module, state, source)
