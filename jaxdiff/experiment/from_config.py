"""Config sections -> the library's typed objects: dataset, schedule, model, optimizer, EMA,
train step. Each function reads only the sections it names; nothing here runs or writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdiff import data as data_lib
from jaxdiff import models, training
from jaxdiff.models.patching import Patched
from jaxdiff.schedules import DiscreteSchedule, EDMSchedule, make_schedule
from jaxdiff.training.step import TrainStepFn
from jaxdiff.training.text_conditioning import TextConditionedModel

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ImageDataset(NamedTuple):
    """A run's dataset: its prepared TFDS builder and what the model must match."""

    builder: Any
    image_shape: tuple[int, int, int]  # after config.data.image_size
    num_classes: int | None  # None: no labels


def open_dataset(data_config: Mapping[str, Any]) -> ImageDataset:
    """Prepare (once) and describe the dataset of ``config.data``."""
    extra = {"path": data_config["path"]} if data_config["name"] == "image_folder" else {}
    extra.update(dict(data_config.get("builder_kwargs", {})))
    builder = data_lib.get_builder(
        data_config["name"],
        data_dir=data_config["data_dir"],
        download=data_config["download"],
        **extra,
    )
    meta = data_lib.dataset_metadata(builder)
    shape = meta.image_shape
    size = data_config["image_size"]
    if size is not None:
        shape = (size, size, shape[-1])
    if None in shape:
        raise ValueError(
            f"Dataset {data_config['name']!r} has images of varying size; set "
            "config.data.image_size."
        )
    return ImageDataset(builder, tuple(int(s) for s in shape), meta.num_classes)


def build_schedule(diffusion_config: Mapping[str, Any]) -> DiscreteSchedule | EDMSchedule:
    """The training schedule of ``config.diffusion``."""
    if diffusion_config["objective"] == "edm":
        return EDMSchedule(
            sigma_min=diffusion_config["sigma_min"],
            sigma_max=diffusion_config["sigma_max"],
            sigma_data=diffusion_config["sigma_data"],
            p_mean=diffusion_config["p_mean"],
            p_std=diffusion_config["p_std"],
        )
    return make_schedule(
        diffusion_config["beta_schedule"],
        diffusion_config["num_train_timesteps"],
        beta_start=diffusion_config["beta_start"],
        beta_end=diffusion_config["beta_end"],
        rescale_betas_zero_snr=diffusion_config["rescale_betas_zero_snr"],
    )


def build_model(
    model_config: Mapping[str, Any],
    *,
    num_classes: int | None,
    image_channels: int | None = None,
    learned_variance: bool = False,
) -> models.UNet | Patched:
    """The U-Net of ``config.model`` (a preset plus field overrides), checked against the data
    (run on pixel patches, `jaxdiff.models.patching.Patched`, when ``patch_size`` > 1).

    Args:
      model_config: ``config.model``.
      num_classes: the dataset's classes (None for unlabelled data); a class-conditional
        preset on unlabelled data, or a class count that differs, is refused.
      image_channels: the images' channels; the model must output as many, or twice as many
        with ``learned_variance`` (``config.diffusion.learned_variance``). None skips this.
      learned_variance: whether the model predicts a variance too.

    Returns:
      The (unbound) U-Net module.
    """
    preset_name = model_config["preset"]
    kwargs = dict(model_config["kwargs"])
    fields = {f.name for f in dataclasses.fields(models.UNet)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"Unknown U-Net field(s) {unknown} in config.model.kwargs; fields: "
            f"{', '.join(sorted(fields - {'parent', 'name'}))}."
        )
    model = getattr(models, preset_name)(dtype=_DTYPES[model_config["dtype"]], **kwargs)
    if model.num_classes and num_classes is None:
        raise ValueError(
            f"Model preset {preset_name} is class-conditional ({model.num_classes} classes) but "
            "the dataset has no labels; set config.model.kwargs.num_classes=0."
        )
    if model.num_classes and num_classes is not None and model.num_classes != num_classes:
        raise ValueError(
            f"config.model has num_classes={model.num_classes} but the dataset has "
            f"{num_classes} classes; set config.model.kwargs.num_classes={num_classes}."
        )
    patch = model_config.get("patch_size", 1)  # absent from configs saved before it existed
    if image_channels is not None:
        _check_output_channels(preset_name, model, image_channels * patch**2, learned_variance)
    return Patched(model, patch_size=patch) if patch > 1 else model


def _check_output_channels(preset_name, model, channels: int, learned_variance: bool) -> None:
    out = model.out_channels or channels
    if out == (2 * channels if learned_variance else channels):
        return
    if out == 2 * channels:
        raise ValueError(
            f"Model preset {preset_name} outputs {out} channels for {channels}-channel images: "
            "a prediction and a learned variance. Set config.diffusion.learned_variance=True to "
            "train both (hybrid loss of Nichol & Dhariwal 2021), or "
            f"config.model.kwargs.out_channels={channels} for a fixed variance."
        )
    want = f"{2 * channels} (learned_variance)" if learned_variance else str(channels)
    raise ValueError(
        f"Model preset {preset_name} outputs {out} channels for {channels}-channel images; "
        f"allowed: {want}. Set config.model.kwargs.out_channels accordingly."
    )


def build_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, learning-rate schedule) of ``config.optim`` over the run's
    ``config.train.num_steps``."""
    optim, num_steps = config.optim, config.train.num_steps
    lr = training.make_lr_schedule(
        learning_rate=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay=optim.decay,
        total_steps=max(num_steps, optim.warmup_steps + 1),
        final_lr_fraction=optim.final_lr_fraction,
    )
    opt = training.make_optimizer(
        learning_rate=lr,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        grad_clip_norm=optim.grad_clip,
    )
    return opt, lr


def build_train_step(
    config: ml_collections.ConfigDict,
    model: models.UNet,
    schedule: Any,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
) -> TrainStepFn:
    """The pure train step of ``config.diffusion`` / ``config.ema`` / ``config.optim``."""
    diffusion_config = config.diffusion
    text = isinstance(model, TextConditionedModel)
    conditional = bool(model.num_classes) or text
    loss_fn = training.make_diffusion_loss_fn(
        model.apply,
        schedule=schedule,
        objective=diffusion_config.objective,
        prediction_type=diffusion_config.prediction_type,
        weighting=diffusion_config.weighting,
        weighting_options={
            "min_snr_gamma": diffusion_config.min_snr_gamma,
            "p2_k": diffusion_config.p2_k,
            "p2_gamma": diffusion_config.p2_gamma,
            "sigma_data": diffusion_config.sigma_data,
        },
        cond_drop_prob=config.train.cond_drop_prob if conditional else 0.0,
        null_label=model.num_classes or None,
        null_conditions=model.null_conditions() if text else None,
        learned_variance=diffusion_config.learned_variance,
        vlb_weight=diffusion_config.vlb_weight,
    )
    return train_step_of_loss(config, loss_fn, optimizer, learning_rate)


def build_ema_decay_fn(config: ml_collections.ConfigDict):
    """``step -> EMA decay`` of ``config.ema`` (a decay or a half-life in images)."""
    ema = config.ema
    return training.ema_decay_schedule(
        decay=ema.decay,
        half_life_images=ema.half_life_images,
        batch_size=config.data.global_batch_size,
        warmup=ema.warmup,
    )


def train_step_of_loss(
    config: ml_collections.ConfigDict,
    loss_fn: Any,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
) -> TrainStepFn:
    """The pure train step of a per-example ``loss_fn`` with ``config.ema`` and
    ``config.optim`` (gradient accumulation), as every run builds it."""
    return training.make_train_step(
        loss_fn,
        optimizer,
        ema_decay_fn=build_ema_decay_fn(config),
        grad_accum_steps=config.optim.grad_accum_steps,
        learning_rate_fn=learning_rate,
    )


def init_params_fn(model: models.UNet, image_shape: tuple[int, ...]):
    """``key -> fresh parameters`` of ``model`` for images of ``image_shape``."""

    def init_params(key):
        x = jnp.zeros((1, *image_shape), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
        return model.init({"params": key}, x, jnp.zeros((1,)), labels=labels)["params"]

    return init_params


def sharded_training(
    config: ml_collections.ConfigDict, init_params: Any, loss_fn: Any
) -> tuple[Any, Any, jax.Array, Any]:
    """What a run of a per-example ``loss_fn`` builds before its loop: the mesh of
    ``config.train.fsdp``, the optimizer of ``config.optim``, the train state initialised
    from ``init_params`` (``key -> parameters``) and sharded on the mesh, and the jitted step
    (``config.ema``, gradient accumulation).

    Returns:
      (state, jitted step, the run's training key, mesh).
    """
    mesh = training.make_mesh(fsdp=config.train.fsdp)
    optimizer, lr = build_optimizer(config)
    init_fn = training.make_init_fn(init_params, optimizer)
    k_init, k_train = jax.random.split(jax.random.key(config.seed))
    state, shardings = training.init_sharded_state(init_fn, k_init, mesh)
    train_step = train_step_of_loss(config, loss_fn, optimizer, lr)
    return state, training.jit_train_step(train_step, mesh, shardings), k_train, mesh
