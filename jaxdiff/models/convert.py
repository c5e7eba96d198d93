"""Import and export of diffusers-format U-Net checkpoints.

A diffusers checkpoint directory (``save_pretrained`` layout) holds ``config.json`` and
``diffusion_pytorch_model.safetensors`` (or the pickle-based ``diffusion_pytorch_model.bin``,
read here without executing pickle code), or, for the Flax models of diffusers <= 0.39,
``diffusion_flax_model.msgpack``. jaxdiff's parameter tree uses diffusers' module names, so a
PyTorch key is the jaxdiff path with list indices dotted (``down_blocks_0`` ->
``down_blocks.0``), ``kernel`` / ``scale`` / ``embedding`` called ``weight``, convolution
kernels HWIO <-> OIHW and linear kernels transposed.
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
from flax import serialization, traverse_util

from jaxdiff.models import diffusers_config, torch_bin
from jaxdiff.models.unet import UNet

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
FLAX_NAME = "diffusion_flax_model.msgpack"

_LIST = re.compile(
    r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|transformer_blocks|"
    r"to_out|net)_(\d+)"
)
# Attention names of UNet2DModel checkpoints written before diffusers 0.14.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def torch_key(path: tuple[str, ...]) -> str:
    """diffusers (PyTorch) state-dict key of a jaxdiff parameter path."""
    *modules, leaf = path
    parts = [_LIST.sub(r"\1.\2", m) for m in modules]
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _from_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def params_to_state_dict(params: Any) -> dict[str, np.ndarray]:
    """diffusers-layout float32 state dict (name -> array) of jaxdiff U-Net parameters."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    return {
        torch_key(path): np.ascontiguousarray(_to_torch(np.asarray(v, np.float32), path[-1]))
        for path, v in flat.items()
    }


def param_shapes(module: UNet, in_channels: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of ``module`` for ``in_channels`` inputs (no compute)."""
    factor = 2 ** (len(module.channels) - 1)
    x = jax.ShapeDtypeStruct((1, factor, factor, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    ctx = None
    if module.context_dim is not None:
        ctx = jax.ShapeDtypeStruct((1, 1, module.context_dim), jnp.float32)
    shapes = jax.eval_shape(lambda x, t, c: module.init(jax.random.key(0), x, t, context=c),
                            x, t, ctx)  # fmt: skip
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {path: tuple(s.shape) for path, s in flat.items()}


def _rename_legacy(key: str) -> str:
    parts = key.split(".")
    if "attentions" in parts and len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
        parts[-2] = _LEGACY_ATTENTION[parts[-2]]
    return ".".join(parts)


def params_from_state_dict(
    module: UNet, state_dict: dict[str, np.ndarray], in_channels: int, source: str = "state dict"
) -> dict[str, Any]:
    """jaxdiff parameters (nested dict, ``param_dtype``) from a diffusers-layout state dict.

    Raises:
      ValueError: naming missing or unexpected keys and every shape mismatch.
    """
    state = {_rename_legacy(k): v for k, v in state_dict.items()}
    shapes = param_shapes(module, in_channels)
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
        value = _from_torch(np.asarray(state[key]), path[-1])
        if value.shape != shapes[path]:
            problems.append(
                f"{key} has shape {tuple(state[key].shape)}, the model needs "
                f"{tuple(_to_torch(np.zeros(shapes[path]), path[-1]).shape)}"
            )
        flat[path] = jnp.asarray(value, module.param_dtype)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")
    return traverse_util.unflatten_dict(flat)


def _read_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (a diffusers checkpoint needs config.json).")
    with open(file) as f:
        return json.load(f)


def _read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
    st, binary = os.path.join(path, SAFETENSORS_NAME), os.path.join(path, BIN_NAME)
    if os.path.isfile(st):
        from safetensors.numpy import load_file

        return load_file(st), st
    if os.path.isfile(binary):
        return torch_bin.load(binary), binary
    raise FileNotFoundError(f"{path}: neither {SAFETENSORS_NAME} nor {BIN_NAME} exists.")


def load_diffusers_unet(path: str | os.PathLike, **overrides: Any) -> tuple[UNet, dict]:
    """Load a diffusers UNet2DModel / UNet2DConditionModel checkpoint directory.

    Args:
      path: directory written by diffusers' ``save_pretrained`` (or `export_diffusers_unet`).
      **overrides: extra `UNet` fields, e.g. ``dtype``, ``attention_impl``, ``remat``.

    Returns:
      (module, params): ``module.apply({"params": params}, x_nhwc, t, labels=..., context=...)``
      gives the PyTorch model's output (transposed to NHWC).

    Raises:
      FileNotFoundError: when config.json or the weights file is missing.
      ValueError: for unsupported config fields or blocks, missing / unexpected parameters,
        or shape mismatches (each named).
    """
    path = os.fspath(path)
    kwargs, in_channels = diffusers_config.unet_kwargs(
        _read_config(path), os.path.join(path, CONFIG_NAME)
    )
    module = UNet(**{**kwargs, **overrides})
    state, source = _read_state_dict(path)
    return module, params_from_state_dict(module, state, in_channels, source)


def export_diffusers_unet(module: UNet, params: Any, path: str | os.PathLike) -> None:
    """Write ``module`` and ``params`` as a diffusers checkpoint directory.

    Self-attention U-Nets become UNet2DModel, transformer U-Nets UNet2DConditionModel; the
    directory holds config.json and diffusion_pytorch_model.safetensors (float32).

    Raises:
      ValueError: naming every setting the diffusers class cannot express.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    params = nn.unbox(params)
    in_ch = int(params["conv_in"]["kernel"].shape[2])
    out_ch = int(params["conv_out"]["kernel"].shape[3])
    config = diffusers_config.diffusers_config(module, in_ch, out_ch)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(params_to_state_dict(params), os.path.join(path, SAFETENSORS_NAME))


def load_flax_diffusers_unet(
    path: str | os.PathLike, *, numerics: str = "flax", **overrides: Any
) -> tuple[UNet, dict]:
    """Load a FlaxUNet2DConditionModel checkpoint of diffusers <= 0.39 (msgpack + config).

    Args:
      path: directory with config.json and diffusion_flax_model.msgpack.
      numerics: "flax" reproduces diffusers' Flax U-Net (which hard-codes 32 groups, epsilon
        1e-5 and tanh-approximate GELU); "torch" reproduces the PyTorch UNet2DConditionModel
        of the same config.
      **overrides: extra `UNet` fields (``dtype``, ``attention_impl``, ...).

    Returns:
      (module, params) as `load_diffusers_unet`.
    """
    if numerics not in ("flax", "torch"):
        raise ValueError(f"numerics must be 'flax' or 'torch', got {numerics!r}.")
    path = os.fspath(path)
    config = _read_config(path)
    file = os.path.join(path, FLAX_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file.")
    kwargs, in_channels = diffusers_config.unet_kwargs(config, os.path.join(path, CONFIG_NAME))
    if numerics == "flax":
        kwargs.update(diffusers_config.flax_numerics())
    module = UNet(**{**kwargs, **overrides})
    with open(file, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    tree = tree.get("params", tree)
    flat = traverse_util.flatten_dict(tree)
    # Re-key in PyTorch layout so that one checker reports missing / unexpected / shape errors.
    state = {torch_key(p): _to_torch(np.asarray(v), p[-1]) for p, v in flat.items()}
    return module, params_from_state_dict(module, state, in_channels, file)
