"""Import and export of transformers-format text encoders (CLIP text towers, T5 encoders).

A transformers checkpoint directory (``save_pretrained`` layout, e.g. a Stable Diffusion
``text_encoder/``) holds ``config.json`` and the weights as ``model.safetensors``, as shards
listed in ``model.safetensors.index.json``, or as the pickle-based ``pytorch_model.bin`` (also
sharded), read here without executing pickle code. The config's ``architectures`` picks the
class: `CLIPTextModel`, `CLIPTextModelWithProjection` or `T5EncoderModel`.

Config fields that change the numbers are reproduced: CLIP ``vocab_size``, ``hidden_size``,
``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
``max_position_embeddings``, ``hidden_act``, ``layer_norm_eps``, ``eos_token_id`` (pooling),
``projection_dim``; T5 ``vocab_size``, ``d_model``, ``d_kv``, ``d_ff``, ``num_layers``,
``num_heads``, ``relative_attention_num_buckets``, ``relative_attention_max_distance``,
``layer_norm_epsilon``, ``feed_forward_proj`` (which, as in transformers, also decides the
activation: ``dense_act_fn`` is derived from it). Refused by name: an unknown activation, a
non-integer ``eos_token_id``, ``is_decoder`` true, ``quantization_config``. Every other field
(dropout, initialisation, other token ids, ``dtype``, generation and bookkeeping entries) has no
effect on an inference forward pass.

Parameter paths mirror transformers' module names: a state-dict key is the jaxdiff path joined
with dots, list indices dotted (``layers_0`` -> ``layers.0``), ``kernel`` / ``scale`` /
``embedding`` called ``weight``, linear kernels transposed. CLIP text-model keys are read with
or without the ``text_model.`` prefix (transformers 5 writes them without, earlier versions and
published Stable Diffusion checkpoints with it); export writes the prefixed layout, which both
load. Old checkpoints' ``position_ids`` buffers and a T5 checkpoint's ``decoder.*`` weights are
skipped, as transformers skips them.
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

from jaxdiff.models import torch_bin
from jaxdiff.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from jaxdiff.models.state_dict import from_torch, to_torch
from jaxdiff.models.t5 import T5EncoderModel
from jaxdiff.models.text_ops import ACTIVATIONS

CONFIG_NAME = "config.json"
SUPPORTED_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")
TextEncoder = CLIPTextModel | T5EncoderModel

_LIST = re.compile(r"^(layers|block|layer)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_CLIP_PREFIX = "text_model."
# Keys that transformers itself skips on load.
_SKIPPED = re.compile(r"(^|\.)embeddings\.position_ids$|^decoder\.|^encoder\.embed_tokens\.weight$")
_CLIP_FIELDS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "eos_token_id": 49407,
}  # fmt: skip
_T5_FIELDS = {
    "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
    "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
}  # fmt: skip


def torch_key(path: tuple[str, ...]) -> str:
    """transformers state-dict key of a jaxdiff text-encoder parameter path (unprefixed)."""
    *modules, leaf = path
    return ".".join([_LIST.sub(r"\1.\2", m) for m in modules] + [_LEAF[leaf]])


def _refuse(source: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")


def _clip_from_config(config: dict, arch: str, source: str, **kw: Any) -> CLIPTextModel:
    fields = {k: config.get(k, default) for k, default in _CLIP_FIELDS.items()}
    problems = []
    if fields["hidden_act"] not in ACTIVATIONS:
        problems.append(f"hidden_act {fields['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    if isinstance(fields["eos_token_id"], bool) or not isinstance(fields["eos_token_id"], int):
        problems.append(f"eos_token_id must be one integer, got {fields['eos_token_id']!r}")
    if fields["hidden_size"] % fields["num_attention_heads"]:
        problems.append("hidden_size is not divisible by num_attention_heads")
    _refuse(source, problems)
    if arch == "CLIPTextModelWithProjection":
        return CLIPTextModelWithProjection(
            **fields, projection_dim=config.get("projection_dim", 512), **kw
        )
    return CLIPTextModel(**fields, **kw)


def feed_forward_kind(feed_forward_proj: str) -> tuple[str, bool]:
    """(activation, gated) of a T5 config's ``feed_forward_proj``, derived as transformers does.

    Raises:
      ValueError: for a string other than ``"ACT"`` or ``"gated-ACT"`` with ACT one of
        `ACTIVATIONS`.
    """
    parts = feed_forward_proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated) or parts[-1] not in ACTIVATIONS:
        raise ValueError(
            f"feed_forward_proj {feed_forward_proj!r} is not 'ACT' or 'gated-ACT' with ACT one "
            f"of {sorted(ACTIVATIONS)}."
        )
    if feed_forward_proj == "gated-gelu":  # T5 v1.1: transformers maps it to the tanh GELU
        return "gelu_new", True
    return parts[-1], gated


def _t5_from_config(config: dict, source: str, **kw: Any) -> T5EncoderModel:
    fields = {k: config.get(k, default) for k, default in _T5_FIELDS.items()}
    if config.get("is_decoder"):
        _refuse(source, ["is_decoder is true; only the T5 encoder is supported"])
    try:
        activation, gated = feed_forward_kind(config.get("feed_forward_proj", "relu"))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return T5EncoderModel(**fields, activation=activation, gated=gated, **kw)


def text_encoder_from_config(
    config: dict[str, Any], source: str = "config", **overrides: Any
) -> TextEncoder:
    """The jaxdiff module of a transformers text-encoder ``config.json`` (already parsed).

    Args:
      config: the parsed config.json.
      source: name for error messages (e.g. the file).
      **overrides: extra module fields, e.g. ``dtype=jnp.bfloat16``, ``param_dtype``.

    Raises:
      ValueError: for an architecture other than `SUPPORTED_ARCHITECTURES` or a config field
        that cannot be reproduced (named).
    """
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{source}: architectures {archs!r} is not one of {list(SUPPORTED_ARCHITECTURES)} "
            "(one entry)."
        )
    if config.get("quantization_config") is not None:
        _refuse(source, ["quantization_config is set; only plain weights can be loaded"])
    if archs[0] == "T5EncoderModel":
        return _t5_from_config(config, source, **overrides)
    return _clip_from_config(config, archs[0], source, **overrides)


def _weight_files(path: str, variant: str | None) -> list[str]:
    tag = f".{variant}" if variant else ""  # transformers puts the variant before the suffix
    return [f"model{tag}.safetensors", f"model.safetensors.index{tag}.json",
            f"pytorch_model{tag}.bin", f"pytorch_model.bin.index{tag}.json"]  # fmt: skip


def _load_file(file: str) -> dict[str, np.ndarray]:
    if file.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(file)
    return torch_bin.load(file)


def read_state_dict(path: str | os.PathLike, variant: str | None = None) -> tuple[dict, str]:
    """(state dict, source) of a transformers checkpoint directory, single file or sharded.

    Raises:
      FileNotFoundError: naming the weight files looked for, or a missing shard.
      ValueError: when an index lists a key that its shard does not hold.
    """
    path = os.fspath(path)
    for name in _weight_files(path, variant):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if not name.endswith(".json"):
            return _load_file(file), file
        with open(file) as f:
            weight_map = json.load(f)["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            shard_file = os.path.join(path, shard)
            if not os.path.isfile(shard_file):
                raise FileNotFoundError(f"{file}: lists {shard}, which does not exist.")
            state.update(_load_file(shard_file))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"{file}: keys {missing[:10]} are not in the shards it names.")
        return state, file
    raise FileNotFoundError(f"{path}: none of {_weight_files(path, variant)} exists.")


def param_shapes(module: TextEncoder) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of a text encoder (no compute)."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda i: module.init(jax.random.key(0), i), ids)
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {p: tuple(s.shape) for p, s in flat.items()}


def _normalise_keys(
    module: TextEncoder, state: dict[str, np.ndarray], source: str
) -> dict[str, np.ndarray]:
    state = dict(state)
    tied = state.get("encoder.embed_tokens.weight")  # T5's token table under its other name
    if isinstance(module, T5EncoderModel) and tied is not None:
        if "shared.weight" not in state:
            state["shared.weight"] = tied
        elif not np.array_equal(np.asarray(tied), np.asarray(state["shared.weight"])):
            _refuse(source, ["shared.weight and encoder.embed_tokens.weight differ (T5 ties them)"])
    if type(module) is CLIPTextModel:
        state = {k.removeprefix(_CLIP_PREFIX): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not _SKIPPED.search(k)}


def params_from_state_dict(
    module: TextEncoder, state_dict: dict[str, np.ndarray], source: str = "state dict"
) -> dict[str, Any]:
    """jaxdiff parameters (nested dict, ``module.param_dtype``) of a transformers state dict.

    Raises:
      ValueError: naming missing or unexpected keys and every shape mismatch.
    """
    state = _normalise_keys(module, state_dict, source)
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
            torch_shape = to_torch(np.zeros(shapes[path]), path[-1]).shape
            problems.append(
                f"{key} has shape {tuple(state[key].shape)}, the model needs {torch_shape}"
            )
        flat[path] = jnp.asarray(value, module.param_dtype)
    _refuse(source, problems)
    return traverse_util.unflatten_dict(flat)


def load_text_encoder(
    path: str | os.PathLike, *, variant: str | None = None, **overrides: Any
) -> tuple[TextEncoder, dict]:
    """Load a transformers CLIPTextModel / CLIPTextModelWithProjection / T5EncoderModel.

    Args:
      path: directory written by transformers' ``save_pretrained`` (e.g. a Stable Diffusion
        ``text_encoder/``), or by `export_text_encoder`.
      variant: weights variant, e.g. "fp16" for ``model.fp16.safetensors``.
      **overrides: extra module fields, e.g. ``dtype=jnp.bfloat16`` (compute) or
        ``param_dtype``.

    Returns:
      (module, params): ``module.apply({"params": params}, input_ids, attention_mask=None)``
      gives a `TextEncoderOutput` with transformers' outputs.

    Raises:
      FileNotFoundError: when config.json or the weights are missing.
      ValueError: for an unsupported architecture or config field, missing / unexpected
        parameters, or shape mismatches (each named).
    """
    path = os.fspath(path)
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (a transformers checkpoint has one).")
    with open(file) as f:
        module = text_encoder_from_config(json.load(f), file, **overrides)
    state, source = read_state_dict(path, variant)
    return module, params_from_state_dict(module, state, source)


def text_encoder_config(module: TextEncoder) -> dict[str, Any]:
    """transformers config.json contents describing ``module``.

    Raises:
      ValueError: for a T5 feed-forward transformers cannot express (gated exact GELU:
        its "gated-gelu" means the tanh approximation).
    """
    if isinstance(module, T5EncoderModel):
        if module.gated and module.activation == "gelu":
            raise ValueError(
                "T5EncoderModel(gated=True, activation='gelu') has no transformers config: "
                "'gated-gelu' means activation 'gelu_new'; use that or an ungated 'gelu'."
            )
        ff = module.activation
        if module.gated:
            ff = "gated-gelu" if ff == "gelu_new" else f"gated-{ff}"
        fields = {k: getattr(module, k) for k in _T5_FIELDS}
        return dict(architectures=["T5EncoderModel"], model_type="t5", feed_forward_proj=ff,
                    is_encoder_decoder=False, use_cache=False, **fields)  # fmt: skip
    fields = {k: getattr(module, k) for k in _CLIP_FIELDS}
    config = dict(architectures=[type(module).__name__], model_type="clip_text_model", **fields)
    if isinstance(module, CLIPTextModelWithProjection):
        config["projection_dim"] = module.projection_dim
    return config


def params_to_state_dict(module: TextEncoder, params: Any) -> dict[str, np.ndarray]:
    """transformers-layout float32 state dict of ``params`` (CLIP text keys prefixed)."""
    flat = traverse_util.flatten_dict(jax.device_get(nn.unbox(params)))
    prefix = _CLIP_PREFIX if type(module) is CLIPTextModel else ""
    return {
        prefix + torch_key(p): np.ascontiguousarray(to_torch(np.asarray(v, np.float32), p[-1]))
        for p, v in flat.items()
    }


def export_text_encoder(module: TextEncoder, params: Any, path: str | os.PathLike) -> None:
    """Write ``module`` and ``params`` as a transformers directory (config.json +
    model.safetensors, float32) that `load_text_encoder` and transformers' ``from_pretrained``
    read.

    Raises:
      ValueError: for a module transformers cannot express (see `text_encoder_config`).
    """
    from safetensors.numpy import save_file

    config = text_encoder_config(module)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = params_to_state_dict(module, params)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
