"""diffusers' checkpoint directories and state-dict layout <-> jaxdiff parameter trees.

Shared by the converters of every model family. A diffusers checkpoint directory
(``save_pretrained`` layout) holds ``config.json`` and ``diffusion_pytorch_model.safetensors``
(or the pickle-based ``diffusion_pytorch_model.bin``, read here without executing pickle code),
or, for the Flax models of diffusers <= 0.39, ``diffusion_flax_model.msgpack``. jaxdiff's
parameter trees use diffusers' module names, so a PyTorch key is the jaxdiff path with list
indices dotted (``down_blocks_0`` -> ``down_blocks.0``), ``kernel`` / ``scale`` / ``embedding``
called ``weight``, convolution kernels HWIO <-> OIHW and linear kernels transposed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from jaxdiff.models import torch_bin

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
FLAX_NAME = "diffusion_flax_model.msgpack"

_LIST = re.compile(
    r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|transformer_blocks|"
    r"to_out|net)_(\d+)"
)
# Attention names of checkpoints written before diffusers 0.14 (and of its Flax VAE).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def torch_key(path: tuple[str, ...]) -> str:
    """diffusers (PyTorch) state-dict key of a jaxdiff parameter path."""
    *modules, leaf = path
    parts = [_LIST.sub(r"\1.\2", m) for m in modules]
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    """A jaxdiff parameter in PyTorch layout (OIHW convolutions, [out, in] linear weights)."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def from_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of `to_torch`."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def params_to_state_dict(params: Any) -> dict[str, np.ndarray]:
    """diffusers-layout float32 state dict (name -> array) of a jaxdiff parameter tree."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    return {
        torch_key(path): np.ascontiguousarray(to_torch(np.asarray(v, np.float32), path[-1]))
        for path, v in flat.items()
    }


def rename_legacy(key: str) -> str:
    """Map a pre-0.14 attention key (``attentions.0.query.weight``) to today's names."""
    parts = key.split(".")
    if "attentions" in parts and len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
        parts[-2] = _LEGACY_ATTENTION[parts[-2]]
    return ".".join(parts)


def params_from_shapes(
    shapes: dict[tuple[str, ...], tuple[int, ...]],
    state_dict: dict[str, np.ndarray],
    param_dtype: Any,
    source: str,
) -> dict[str, Any]:
    """jaxdiff parameters (nested dict) for ``shapes`` (path -> shape) from a state dict.

    Raises:
      ValueError: naming missing or unexpected keys and every shape mismatch.
    """
    state = {rename_legacy(k): v for k, v in state_dict.items()}
    wanted = {torch_key(p): p for p in shapes}
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    problems = []
    if missing:
        problems.append(f"missing parameters {missing}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected}")
    flat = {}
    for key in sorted(set(wanted) & set(state)):
        path = wanted[key]
        value = from_torch(np.asarray(state[key]), path[-1])
        if value.shape != shapes[path]:
            problems.append(
                f"{key} has shape {tuple(state[key].shape)}, the model needs "
                f"{tuple(to_torch(np.zeros(shapes[path]), path[-1]).shape)}"
            )
        flat[path] = jnp.asarray(value, param_dtype)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")
    return traverse_util.unflatten_dict(flat)


def read_config(path: str) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (a diffusers checkpoint needs config.json).")
    with open(file) as f:
        return json.load(f)


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
    """(state dict, file it came from) of a directory's safetensors or ``.bin`` weights."""
    st, binary = os.path.join(path, SAFETENSORS_NAME), os.path.join(path, BIN_NAME)
    if os.path.isfile(st):
        from safetensors.numpy import load_file

        return load_file(st), st
    if os.path.isfile(binary):
        return torch_bin.load(binary), binary
    raise FileNotFoundError(f"{path}: neither {SAFETENSORS_NAME} nor {BIN_NAME} exists.")


def read_flax_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
    """A directory's ``diffusion_flax_model.msgpack`` re-keyed in PyTorch layout (and its file).

    Re-keying lets one checker (`params_from_shapes`) report missing / unexpected / shape errors.
    """
    file = os.path.join(path, FLAX_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file.")
    with open(file, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    flat = traverse_util.flatten_dict(tree.get("params", tree))
    return {torch_key(p): to_torch(np.asarray(v), p[-1]) for p, v in flat.items()}, file


def write_checkpoint(path: str, config: dict[str, Any], params: Any) -> None:
    """Write ``config.json`` and float32 ``diffusion_pytorch_model.safetensors`` into path."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(params_to_state_dict(params), os.path.join(path, SAFETENSORS_NAME))
