"""Import and export of diffusers-format U-Net checkpoints.

The directory layout, key naming and parameter transposes are shared with the other model
families (`jaxdiff.models.state_dict`); this module adds what is particular to the U-Net.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff.models import diffusers_config
from jaxdiff.models import state_dict as sd
from jaxdiff.models.state_dict import (
    BIN_NAME,
    CONFIG_NAME,
    FLAX_NAME,
    SAFETENSORS_NAME,
    params_to_state_dict,
    torch_key,
)
from jaxdiff.models.unet import UNet

__all__ = [
    "BIN_NAME", "CONFIG_NAME", "FLAX_NAME", "SAFETENSORS_NAME", "export_diffusers_unet",
    "load_diffusers_unet", "load_flax_diffusers_unet", "param_shapes", "params_from_state_dict",
    "params_to_state_dict", "torch_key",
]  # fmt: skip

# Earlier names of two shared helpers, kept for callers of this module.
_to_torch, _read_config = sd.to_torch, sd.read_config


def param_shapes(module: UNet, in_channels: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of ``module`` for ``in_channels`` inputs (no compute)."""
    factor = 2 ** (len(module.channels) - 1)
    x = jax.ShapeDtypeStruct((1, factor, factor, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    ctx = None
    if module.context_dim is not None:
        ctx = jax.ShapeDtypeStruct((1, 1, module.context_dim), jnp.float32)
    added = {}
    if module.addition_embed_type == "text_time":  # any split of the input width will do
        width = module.addition_embed_dim - module.addition_time_embed_dim
        added = dict(text_embeds=jax.ShapeDtypeStruct((1, width), jnp.float32),
                     time_ids=jax.ShapeDtypeStruct((1, 1), jnp.float32))  # fmt: skip

    def init(x, t, c, added):
        return module.init(jax.random.key(0), x, t, context=c, **added)

    shapes = jax.eval_shape(init, x, t, ctx, added)
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {path: tuple(s.shape) for path, s in flat.items()}


def params_from_state_dict(
    module: UNet, state_dict: dict[str, np.ndarray], in_channels: int, source: str = "state dict"
) -> dict[str, Any]:
    """jaxdiff parameters (nested dict, ``param_dtype``) from a diffusers-layout state dict.

    Raises:
      ValueError: naming missing or unexpected keys and every shape mismatch.
    """
    shapes = param_shapes(module, in_channels)
    return sd.params_from_shapes(shapes, state_dict, module.param_dtype, source)


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
    state, source = sd.read_state_dict(path)
    return module, params_from_state_dict(module, state, in_channels, source)


def export_diffusers_unet(module: UNet, params: Any, path: str | os.PathLike) -> None:
    """Write ``module`` and ``params`` as a diffusers checkpoint directory.

    Self-attention U-Nets become UNet2DModel, transformer U-Nets UNet2DConditionModel; the
    directory holds config.json and diffusion_pytorch_model.safetensors (float32).

    Raises:
      ValueError: naming every setting the diffusers class cannot express.
    """
    params = nn.unbox(params)
    in_ch = int(params["conv_in"]["kernel"].shape[2])
    out_ch = int(params["conv_out"]["kernel"].shape[3])
    config = diffusers_config.diffusers_config(module, in_ch, out_ch)
    sd.write_checkpoint(os.fspath(path), config, params)


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
    state, file = sd.read_flax_state_dict(path)
    kwargs, in_channels = diffusers_config.unet_kwargs(config, os.path.join(path, CONFIG_NAME))
    if numerics == "flax":
        kwargs.update(diffusers_config.flax_numerics())
    module = UNet(**{**kwargs, **overrides})
    return module, params_from_state_dict(module, state, in_channels, file)
