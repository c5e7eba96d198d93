"""Translation between diffusers U-Net ``config.json`` files and `UNet` keyword arguments.

Supported: UNet2DModel (DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D and their up
counterparts, UNetMidBlock2D), UNet2DConditionModel (DownBlock2D, CrossAttnDownBlock2D,
UNetMidBlock2DCrossAttn / UNetMidBlock2D and their up counterparts; SD 1.x / 2.x and SDXL's
``addition_embed_type="text_time"``) and the Flax
FlaxUNet2DConditionModel of diffusers <= 0.39. Anything else is refused with an error that
names the field.
"""

from __future__ import annotations

from typing import Any

# Fields each class understands, with the values jaxdiff can reproduce: a tuple lists the
# allowed values, None means any value is translated below (or is irrelevant to the maths).
# ``upcast_attention`` (SD 2.1) is one of the latter: jaxdiff's attention always computes its
# scores and softmax in float32, whatever the compute dtype.
_COMMON = {
    "sample_size": None, "in_channels": None, "out_channels": None,
    "down_block_types": None, "up_block_types": None, "mid_block_type": None,
    "block_out_channels": None, "layers_per_block": None, "dropout": None,
    "flip_sin_to_cos": None, "freq_shift": None, "attention_head_dim": None,
}  # fmt: skip
_TORCH_COMMON = {
    **_COMMON,
    "center_input_sample": None, "time_embedding_type": ("positional",),
    "time_embedding_dim": None, "mid_block_scale_factor": None, "downsample_padding": None,
    "act_fn": ("silu", "swish"), "norm_num_groups": None, "norm_eps": None,
    "resnet_time_scale_shift": ("default", "scale_shift"), "class_embed_type": (None,),
    "num_class_embeds": None,
}  # fmt: skip
FIELDS = {
    "UNet2DModel": {
        **_TORCH_COMMON,
        "downsample_type": ("conv", "resnet"), "upsample_type": ("conv", "resnet"),
        "attn_norm_num_groups": None, "add_attention": None, "num_train_timesteps": None,
    },
    "UNet2DConditionModel": {
        **_TORCH_COMMON,
        "only_cross_attention": (False,), "cross_attention_dim": None,
        "transformer_layers_per_block": None, "reverse_transformer_layers_per_block": (None,),
        "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
        "num_attention_heads": (None,), "dual_cross_attention": (False,),
        "use_linear_projection": None, "addition_embed_type": (None, "text_time"),
        "addition_time_embed_dim": None, "upcast_attention": None,
        "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0,),
        "time_embedding_act_fn": (None,), "timestep_post_act": (None,),
        "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
        "projection_class_embeddings_input_dim": None, "attention_type": ("default",),
        "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
        "cross_attention_norm": (None,), "addition_embed_type_num_heads": None,
    },
    "FlaxUNet2DConditionModel": {
        **_COMMON,
        "only_cross_attention": (False,), "num_attention_heads": None,
        "cross_attention_dim": None, "use_linear_projection": None, "dtype": None,
        "use_memory_efficient_attention": None, "split_head_dim": None,
        "transformer_layers_per_block": None, "addition_embed_type": (None,),
        "addition_time_embed_dim": None, "addition_embed_type_num_heads": None,
        "projection_class_embeddings_input_dim": None,
    },
}  # fmt: skip
_DEFAULTS = {
    "UNet2DModel": dict(
        in_channels=3, out_channels=3, center_input_sample=False, freq_shift=0,
        flip_sin_to_cos=True, time_embedding_dim=None, mid_block_type="UNetMidBlock2D",
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
        downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0,
        attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
        resnet_time_scale_shift="default", add_attention=True, num_class_embeds=None,
    ),
    "UNet2DConditionModel": dict(
        in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
        freq_shift=0, mid_block_type="UNetMidBlock2DCrossAttn",
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
        mid_block_scale_factor=1, dropout=0.0, norm_num_groups=32, norm_eps=1e-5,
        cross_attention_dim=1280, transformer_layers_per_block=1, attention_head_dim=8,
        use_linear_projection=False, num_class_embeds=None, resnet_time_scale_shift="default",
        time_embedding_dim=None,
    ),
    "FlaxUNet2DConditionModel": dict(
        in_channels=4, out_channels=4, mid_block_type="UNetMidBlock2DCrossAttn",
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
        num_attention_heads=None, cross_attention_dim=1280, dropout=0.0,
        use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0,
        transformer_layers_per_block=1,
    ),
}  # fmt: skip
# Per level: block type -> (has attention, resampling or None when the type fixes none).
_DOWN = {
    "DownBlock2D": (False, "conv"), "AttnDownBlock2D": (True, None),
    "ResnetDownsampleBlock2D": (False, "resnet"), "CrossAttnDownBlock2D": (True, "conv"),
}  # fmt: skip
_UP = {
    "UpBlock2D": (False, "conv"), "AttnUpBlock2D": (True, None),
    "ResnetUpsampleBlock2D": (False, "resnet"), "CrossAttnUpBlock2D": (True, "conv"),
}  # fmt: skip
_BLOCKS = {
    "UNet2DModel": ({"DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"},
                    {"UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"}),
    "UNet2DConditionModel": ({"DownBlock2D", "CrossAttnDownBlock2D"},
                             {"UpBlock2D", "CrossAttnUpBlock2D"}),
}  # fmt: skip
_BLOCKS["FlaxUNet2DConditionModel"] = _BLOCKS["UNet2DConditionModel"]


def class_name(config: dict[str, Any]) -> str:
    """The diffusers class a config describes (UNet2DModel when it does not say)."""
    name = config.get("_class_name")
    if name is None:
        return "UNet2DConditionModel" if "cross_attention_dim" in config else "UNet2DModel"
    if name not in FIELDS:
        raise ValueError(f"config.json: _class_name {name!r} is not one of {sorted(FIELDS)}.")
    return name


def _check_fields(name: str, cfg: dict[str, Any], source: str) -> None:
    check_fields(FIELDS[name], name, cfg, source)


def check_fields(
    fields: dict[str, tuple | None], name: str, cfg: dict[str, Any], source: str
) -> None:
    """Raise one ValueError naming every field of ``cfg`` that ``fields`` does not allow.

    Args:
      fields: field -> allowed values (a tuple), or None when any value is translated.
      name: the diffusers class, for the message.
      cfg: the parsed config; keys starting with "_" (diffusers' metadata) are skipped.
      source: name used in the message (e.g. the file path).
    """
    problems = []
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key not in fields:
            problems.append(f"{key!r} is not a {name} field jaxdiff understands")
            continue
        allowed = fields[key]
        if allowed is not None and value not in allowed:
            problems.append(f"{key}={value!r} is not supported (supported: {list(allowed)})")
    if problems:
        raise ValueError(f"{source}: unsupported diffusers config: " + "; ".join(problems) + ".")


def _uniform(value, n: int, field: str, source: str):
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"{source}: {field} has {len(value)} entries for {n} levels.")
        if any(isinstance(v, list | tuple) for v in value):
            raise ValueError(f"{source}: nested {field} lists are not supported.")
        return tuple(value)
    return value


def _levels(name: str, cfg: dict[str, Any], source: str):
    """Per-level attention flags and the (single) resampling type."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    n = len(cfg["block_out_channels"])
    if len(down) != n or len(up) != n:
        raise ValueError(
            f"{source}: {len(down)} down and {len(up)} up block types for {n} block_out_channels."
        )
    allowed_down, allowed_up = _BLOCKS[name]
    bad = [b for b in down if b not in allowed_down] + [b for b in up if b not in allowed_up]
    if bad:
        raise ValueError(
            f"{source}: unsupported block types {bad} for {name} (supported: "
            f"{sorted(allowed_down)} and {sorted(allowed_up)})."
        )
    attention, resamples = [], set()
    for lv in range(n):
        d_attn, d_res = _DOWN[down[lv]]
        u_attn, u_res = _UP[up[n - 1 - lv]]
        if d_attn != u_attn:
            raise ValueError(
                f"{source}: level {lv} has {down[lv]} but {up[n - 1 - lv]}; jaxdiff needs the same "
                "attention on the way down and up."
            )
        attention.append(d_attn)
        if lv < n - 1:
            resamples.add(d_res or cfg.get("downsample_type", "conv"))
        if lv > 0:
            resamples.add(u_res or cfg.get("upsample_type", "conv"))
    if len(resamples) > 1:
        raise ValueError(f"{source}: mixed resampling {sorted(resamples)} is not supported.")
    return tuple(lv for lv, a in enumerate(attention) if a), (resamples or {"conv"}).pop()


def _class_count(cfg: dict[str, Any]) -> int | None:
    n = cfg.get("num_class_embeds")
    return None if n is None else int(n) - 1  # jaxdiff's table has num_classes + 1 rows


def unet_kwargs(config: dict[str, Any], source: str = "config.json") -> tuple[dict, int]:
    """`UNet` keyword arguments and input channels equivalent to a diffusers U-Net config.

    Args:
      config: the parsed ``config.json`` of a diffusers UNet2DModel, UNet2DConditionModel or
        FlaxUNet2DConditionModel.
      source: name used in error messages (e.g. the file path).

    Returns:
      (kwargs for `jaxdiff.models.UNet`, number of input channels).

    Raises:
      ValueError: naming every field (or block type) jaxdiff cannot reproduce.
    """
    name = class_name(config)
    _check_fields(name, config, source)
    cfg = {**_DEFAULTS[name], **config}
    attention_levels, resample = _levels(name, cfg, source)
    n = len(cfg["block_out_channels"])
    channels = tuple(int(c) for c in cfg["block_out_channels"])
    kw: dict[str, Any] = dict(
        channels=channels,
        num_res_blocks=_uniform(cfg["layers_per_block"], n, "layers_per_block", source),
        attention_levels=attention_levels, out_channels=cfg["out_channels"],
        dropout=float(cfg["dropout"]), flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]),
        freq_shift=cfg["freq_shift"], resample=resample,
    )  # fmt: skip
    if name == "UNet2DModel":
        kw.update(_unet2d_kwargs(cfg, source))
    else:
        kw.update(_conditional_kwargs(name, cfg, n, source))
    return kw, int(cfg["in_channels"])


def _torch_common(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["norm_num_groups"] is None:
        raise ValueError("config.json: norm_num_groups=None (no output norm) is not supported.")
    return dict(
        norm_groups=int(cfg["norm_num_groups"]), norm_eps=float(cfg["norm_eps"]),
        scale_shift_norm=cfg["resnet_time_scale_shift"] == "scale_shift",
        downsample_padding=int(cfg["downsample_padding"]),
        time_embed_dim=cfg["time_embedding_dim"], mid_scale=float(cfg["mid_block_scale_factor"]),
        center_input=bool(cfg["center_input_sample"]), num_classes=_class_count(cfg),
    )  # fmt: skip


def _unet2d_kwargs(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    if cfg["mid_block_type"] != "UNetMidBlock2D":
        raise ValueError(f"{source}: mid_block_type={cfg['mid_block_type']!r} is not supported.")
    groups = cfg["attn_norm_num_groups"]
    head = cfg["attention_head_dim"]
    return dict(
        _torch_common(cfg), attention_type="self", head_dim=None if head is None else int(head),
        mid_attention=bool(cfg["add_attention"]),
        mid_attention_norm=groups is not None or cfg["resnet_time_scale_shift"] == "default",
        mid_attention_groups=None if groups is None else int(groups),
    )  # fmt: skip


def _conditional_kwargs(name: str, cfg: dict[str, Any], n: int, source: str) -> dict[str, Any]:
    mid = cfg["mid_block_type"]
    if mid not in ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"):
        raise ValueError(f"{source}: mid_block_type={mid!r} is not supported.")
    context = _uniform(cfg["cross_attention_dim"], n, "cross_attention_dim", source)
    if isinstance(context, tuple):
        if len(set(context)) != 1:
            raise ValueError(f"{source}: per-level cross_attention_dim {context} is not supported.")
        context = context[0]
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]  # diffusers' naming
    kw = dict(
        attention_type="transformer", num_heads=_uniform(heads, n, "attention_head_dim", source),
        context_dim=int(context), mid_attention=mid == "UNetMidBlock2DCrossAttn",
        transformer_depth=_uniform(
            cfg["transformer_layers_per_block"], n, "transformer_layers_per_block", source
        ),
        linear_projection=bool(cfg["use_linear_projection"]),
    )  # fmt: skip
    kw.update(_addition_kwargs(cfg, source))
    if name == "FlaxUNet2DConditionModel":
        kw.update(flax_numerics())
    else:
        kw.update(_torch_common(cfg), transformer_norm_eps=1e-6)
    return kw


def _addition_kwargs(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """SDXL's added conditioning: ``addition_embed_type="text_time"`` and its two widths."""
    kind = cfg.get("addition_embed_type")
    if kind is None:
        return {}
    if kind != "text_time":
        raise ValueError(f"{source}: addition_embed_type={kind!r} is not supported (supported: "
                         "[None, 'text_time']).")  # fmt: skip
    dims = cfg.get("addition_time_embed_dim"), cfg.get("projection_class_embeddings_input_dim")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise ValueError(
            f"{source}: addition_embed_type='text_time' needs integer addition_time_embed_dim "
            f"and projection_class_embeddings_input_dim, got {dims}."
        )
    return dict(addition_embed_type=kind, addition_time_embed_dim=dims[0],
                addition_embed_dim=dims[1])  # fmt: skip


def flax_numerics() -> dict[str, Any]:
    """What diffusers' Flax U-Net hard-codes: 32 groups, eps 1e-5 everywhere, tanh GELU."""
    return dict(
        norm_groups=32,
        norm_eps=1e-5,
        transformer_norm_eps=1e-5,
        gelu_approximate=True,
        downsample_padding=1,
    )


def _refuse(problems: list[str], target: str) -> None:
    if problems:
        raise ValueError(f"export to {target}: " + "; ".join(problems) + ".")


def _block_types(m, target: str) -> tuple[list[str], list[str]]:
    n = len(m.channels)
    if target == "UNet2DConditionModel":
        down = ["CrossAttnDownBlock2D" if lv in m.attention_levels else "DownBlock2D"
                for lv in range(n)]  # fmt: skip
        up = ["CrossAttnUpBlock2D" if lv in m.attention_levels else "UpBlock2D"
              for lv in reversed(range(n))]  # fmt: skip
        return down, up
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if m.resample == "resnet"
        else ("DownBlock2D", "UpBlock2D")
    )  # fmt: skip
    down = ["AttnDownBlock2D" if lv in m.attention_levels else plain_down for lv in range(n)]
    up = ["AttnUpBlock2D" if lv in m.attention_levels else plain_up for lv in reversed(range(n))]
    return down, up


def _common_export(m, in_channels: int, out_channels: int) -> dict[str, Any]:
    res = m.level_res_blocks()
    return dict(
        in_channels=in_channels, out_channels=out_channels,
        center_input_sample=m.center_input, time_embedding_type="positional",
        time_embedding_dim=m.time_embed_dim, freq_shift=m.freq_shift,
        flip_sin_to_cos=m.flip_sin_to_cos, block_out_channels=list(m.channels),
        layers_per_block=res[0] if len(set(res)) == 1 else list(res),
        mid_block_scale_factor=m.mid_scale, downsample_padding=m.downsample_padding,
        dropout=m.dropout, act_fn="silu", norm_num_groups=m.norm_groups, norm_eps=m.norm_eps,
        resnet_time_scale_shift="scale_shift" if m.scale_shift_norm else "default",
        class_embed_type=None,
        num_class_embeds=m.num_classes + 1 if m.num_classes else None,
    )  # fmt: skip


def _unet2d_head_dim(m, problems: list[str]) -> int | None:
    n = len(m.channels)
    levels = sorted(set(m.attention_levels) | ({n - 1} if m.mid_attention else set()))
    heads = {lv: m.level_heads(lv) for lv in levels}
    if all(h == 1 for h in heads.values()):
        return None
    sizes = {m.channels[lv] // h for lv, h in heads.items()}
    if len(sizes) > 1:
        problems.append(f"UNet2DModel needs one head size for all levels, got {sorted(sizes)}")
    return sizes.pop()


def diffusers_config(m, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The diffusers ``config.json`` dict of a `UNet` (UNet2DModel or UNet2DConditionModel).

    Raises:
      ValueError: naming every setting the target diffusers class cannot express.
    """
    problems: list[str] = []
    if m.attention_type == "self":
        target = "UNet2DModel"
        cfg = _common_export(m, in_channels, out_channels)
        if len(set(m.level_res_blocks())) > 1:
            problems.append("UNet2DModel needs the same num_res_blocks on every level")
        if not m.mid_attention_norm and not m.scale_shift_norm:
            problems.append("mid_attention_norm=False needs scale_shift_norm=True")
        groups = m.mid_attention_groups
        if m.mid_attention_norm and m.scale_shift_norm:
            groups = groups or m.norm_groups
        cfg.update(
            mid_block_type="UNetMidBlock2D", downsample_type=m.resample,
            upsample_type=m.resample, attention_head_dim=_unet2d_head_dim(m, problems),
            attn_norm_num_groups=groups, add_attention=m.mid_attention,
        )  # fmt: skip
    else:
        target = "UNet2DConditionModel"
        cfg = _common_export(m, in_channels, out_channels)
        n = len(m.channels)
        checks = [
            (m.context_dim is None, "context_dim=None (diffusers always cross-attends)"),
            (m.resample != "conv", f"resample={m.resample!r} (only 'conv')"),
            (m.transformer_norm_eps != 1e-6, "transformer_norm_eps other than 1e-6"),
            (m.gelu_approximate, "gelu_approximate=True"),
            (not m.mid_attention_norm or m.mid_attention_groups not in (None, m.norm_groups),
             "a middle attention norm other than the ResBlocks'"),
        ]  # fmt: skip
        problems += [msg for bad, msg in checks if bad]
        depth = [m.level_depth(lv) for lv in range(n)]
        cfg.update(
            mid_block_type="UNetMidBlock2DCrossAttn" if m.mid_attention else "UNetMidBlock2D",
            cross_attention_dim=m.context_dim,
            attention_head_dim=[m.level_heads(lv) for lv in range(n)],
            transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth,
            use_linear_projection=m.linear_projection,
            addition_embed_type=m.addition_embed_type,
            addition_time_embed_dim=m.addition_time_embed_dim,
            projection_class_embeddings_input_dim=m.addition_embed_dim,
        )  # fmt: skip
    _refuse(problems, target)
    down, up = _block_types(m, target)
    return {"_class_name": target, "_diffusers_version": "0.39.0", **cfg,
            "down_block_types": down, "up_block_types": up}  # fmt: skip
