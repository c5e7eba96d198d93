"""Import and export of diffusers-format ``AutoencoderKL`` checkpoints (a pipeline's ``vae/``).

Reads ``config.json`` with ``diffusion_pytorch_model.safetensors`` or ``.bin`` (PyTorch
AutoencoderKL, any diffusers version) or ``diffusion_flax_model.msgpack`` (FlaxAutoencoderKL of
diffusers <= 0.39); writes config.json and safetensors. Every config field is either reproduced
or refused by name; the directory layout and key naming are `jaxdiff.models.state_dict`'s.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxdiff.models import state_dict as sd
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.diffusers_config import check_fields

DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"

# Field -> allowed values (a tuple), or None when any value is translated below or does not
# change the model's outputs: ``sample_size`` only sets diffusers' tile size, ``force_upcast``
# tells diffusers' pipelines to run the VAE in float32.
_COMMON = {
    "in_channels": None, "out_channels": None, "down_block_types": None,
    "up_block_types": None, "block_out_channels": None, "layers_per_block": None,
    "latent_channels": None, "norm_num_groups": None, "sample_size": None,
    "scaling_factor": None,
}  # fmt: skip
FIELDS = {
    "AutoencoderKL": {
        **_COMMON, "act_fn": ("silu", "swish"), "shift_factor": None, "latents_mean": None,
        "latents_std": None, "force_upcast": None, "use_quant_conv": (True, False),
        "use_post_quant_conv": (True, False), "mid_block_add_attention": (True, False),
    },
    # diffusers' Flax VAE always uses SiLU (whatever act_fn says) and its own dtype argument.
    "FlaxAutoencoderKL": {**_COMMON, "act_fn": None, "dtype": None},
}  # fmt: skip
_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=(DOWN_BLOCK,), up_block_types=(UP_BLOCK,),
    block_out_channels=(64,), layers_per_block=1, latent_channels=4, norm_num_groups=32,
    scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
)  # fmt: skip


def _class_name(config: dict[str, Any], source: str) -> str:
    name = config.get("_class_name", "AutoencoderKL")
    if name not in FIELDS:
        raise ValueError(f"{source}: _class_name {name!r} is not one of {sorted(FIELDS)}.")
    return name


def _int(cfg: dict[str, Any], field: str, source: str) -> int:
    value = cfg[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{source}: {field}={value!r} is not supported (one integer).")
    return value


def _floats(value, field: str, source: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{source}: {field}={value!r} must be a list of numbers or null.")
    return tuple(float(v) for v in value)


def _check_blocks(cfg: dict[str, Any], source: str) -> None:
    n = len(cfg["block_out_channels"])
    for field, block in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
        types = list(cfg[field])
        if len(types) != n:
            raise ValueError(
                f"{source}: {field} has {len(types)} entries for {n} block_out_channels."
            )
        bad = sorted({t for t in types if t != block})
        if bad:
            raise ValueError(f"{source}: {field} {bad} are not supported (supported: [{block!r}]).")


def vae_kwargs(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """`AutoencoderKL` keyword arguments equivalent to a diffusers VAE config.

    Args:
      config: the parsed ``config.json`` of a diffusers AutoencoderKL or FlaxAutoencoderKL.
      source: name used in error messages (e.g. the file path).

    Returns:
      Keyword arguments for `jaxdiff.models.AutoencoderKL`.

    Raises:
      ValueError: naming every field (or block type) jaxdiff cannot reproduce.
    """
    name = _class_name(config, source)
    check_fields(FIELDS[name], name, config, source)
    cfg = {**_DEFAULTS, **config}
    _check_blocks(cfg, source)
    shift = cfg["shift_factor"]
    return dict(
        in_channels=_int(cfg, "in_channels", source),
        out_channels=_int(cfg, "out_channels", source),
        latent_channels=_int(cfg, "latent_channels", source),
        channels=tuple(int(c) for c in cfg["block_out_channels"]),
        layers_per_block=_int(cfg, "layers_per_block", source),
        norm_groups=_int(cfg, "norm_num_groups", source),
        mid_attention=bool(cfg["mid_block_add_attention"]),
        use_quant_conv=bool(cfg["use_quant_conv"]),
        use_post_quant_conv=bool(cfg["use_post_quant_conv"]),
        scaling_factor=float(cfg["scaling_factor"]),
        shift_factor=None if shift is None else float(shift),
        latents_mean=_floats(cfg["latents_mean"], "latents_mean", source),
        latents_std=_floats(cfg["latents_std"], "latents_std", source),
    )


def vae_config(module: AutoencoderKL) -> dict[str, Any]:
    """The diffusers ``config.json`` dict of an `AutoencoderKL` (class AutoencoderKL)."""
    n = len(module.channels)

    def floats(value):
        return None if value is None else [float(v) for v in value]

    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.39.0",
        "in_channels": module.in_channels, "out_channels": module.out_channels,
        "down_block_types": [DOWN_BLOCK] * n, "up_block_types": [UP_BLOCK] * n,
        "block_out_channels": [int(c) for c in module.channels],
        "layers_per_block": module.layers_per_block, "act_fn": "silu",
        "latent_channels": module.latent_channels, "norm_num_groups": module.norm_groups,
        "scaling_factor": module.scaling_factor, "shift_factor": module.shift_factor,
        "latents_mean": floats(module.latents_mean), "latents_std": floats(module.latents_std),
        "use_quant_conv": module.use_quant_conv,
        "use_post_quant_conv": module.use_post_quant_conv,
        "mid_block_add_attention": module.mid_attention,
    }  # fmt: skip


def vae_param_shapes(module: AutoencoderKL) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of ``module`` (no compute)."""
    f = module.downsampling_factor
    x = jax.ShapeDtypeStruct((1, f, f, module.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {path: tuple(s.shape) for path, s in flat.items()}


def _vae_dir(path: str | os.PathLike) -> str:
    """``path`` itself, or its ``vae/`` subdirectory when path is a pipeline directory."""
    path = os.fspath(path)
    sub = os.path.join(path, "vae")
    if not os.path.isfile(os.path.join(path, sd.CONFIG_NAME)) and os.path.isdir(sub):
        return sub
    return path


def load_diffusers_vae(path: str | os.PathLike, **overrides: Any) -> tuple[AutoencoderKL, dict]:
    """Load a diffusers AutoencoderKL checkpoint directory (safetensors or ``.bin``).

    Args:
      path: the VAE directory written by ``save_pretrained`` (or `export_diffusers_vae`), or a
        pipeline directory holding it as ``vae/``.
      **overrides: extra `AutoencoderKL` fields, e.g. ``dtype``, ``attention_impl``, ``remat``.

    Returns:
      (module, params): ``module.apply({"params": params}, x_nhwc, method="encode")`` gives the
      PyTorch model's posterior mean and log-variance (NHWC), ``method="decode"`` its decoder.

    Raises:
      FileNotFoundError: when config.json or the weights file is missing.
      ValueError: for unsupported config fields or block types, missing / unexpected
        parameters, or shape mismatches (each named).
    """
    path = _vae_dir(path)
    kwargs = vae_kwargs(sd.read_config(path), os.path.join(path, sd.CONFIG_NAME))
    module = AutoencoderKL(**{**kwargs, **overrides})
    state, source = sd.read_state_dict(path)
    shapes = vae_param_shapes(module)
    return module, sd.params_from_shapes(shapes, state, module.param_dtype, source)


def load_flax_diffusers_vae(
    path: str | os.PathLike, **overrides: Any
) -> tuple[AutoencoderKL, dict]:
    """Load a FlaxAutoencoderKL checkpoint of diffusers <= 0.39 (config + msgpack).

    Its numerics are those of the PyTorch AutoencoderKL of the same config (mid-block attention
    and both quant convolutions included), so the result also exports to PyTorch unchanged.

    Args:
      path: directory with config.json and diffusion_flax_model.msgpack (or a pipeline
        directory holding it as ``vae/``).
      **overrides: extra `AutoencoderKL` fields (``dtype``, ``attention_impl``, ...).

    Returns:
      (module, params) as `load_diffusers_vae`.
    """
    path = _vae_dir(path)
    source = os.path.join(path, sd.CONFIG_NAME)
    config = {"_class_name": "FlaxAutoencoderKL", **sd.read_config(path)}
    state, file = sd.read_flax_state_dict(path)
    if config["_class_name"] != "FlaxAutoencoderKL":
        raise ValueError(
            f"{source}: _class_name {config['_class_name']!r} is not 'FlaxAutoencoderKL' "
            "(load_diffusers_vae reads PyTorch checkpoints)."
        )
    module = AutoencoderKL(**{**vae_kwargs(config, source), **overrides})
    shapes = vae_param_shapes(module)
    return module, sd.params_from_shapes(shapes, state, module.param_dtype, file)


def export_diffusers_vae(module: AutoencoderKL, params: Any, path: str | os.PathLike) -> None:
    """Write ``module`` and ``params`` as a diffusers AutoencoderKL checkpoint directory.

    The directory holds config.json and diffusion_pytorch_model.safetensors (float32);
    diffusers' ``AutoencoderKL.from_pretrained(path)`` loads it.

    Raises:
      ValueError: when ``params`` do not fit ``module`` (naming the parameters).
    """
    params = nn.unbox(params)
    state = sd.params_to_state_dict(params)
    sd.params_from_shapes(vae_param_shapes(module), state, module.param_dtype, "export params")
    sd.write_checkpoint(os.fspath(path), vae_config(module), params)
