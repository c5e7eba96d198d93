"""Config -> typed objects: schedule, model, dataset, and the sampling function of a model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import jaxdiff
from jaxdiff import models, training
from jaxdiff.diffusion import edm_preconditioning, expand
from jaxdiff.guidance import classifier_free_guidance
from jaxdiff.schedules import DiscreteSchedule, EDMSchedule, make_schedule

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_schedule(d: Mapping[str, Any]) -> DiscreteSchedule | EDMSchedule:
    """The training schedule of ``config.diffusion``."""
    if d["objective"] == "edm":
        return EDMSchedule(
            sigma_min=d["sigma_min"],
            sigma_max=d["sigma_max"],
            sigma_data=d["sigma_data"],
            p_mean=d["p_mean"],
            p_std=d["p_std"],
        )
    return make_schedule(
        d["beta_schedule"],
        d["num_train_timesteps"],
        beta_start=d["beta_start"],
        beta_end=d["beta_end"],
        rescale_betas_zero_snr=d["rescale_betas_zero_snr"],
    )


def build_optimizer(config: Any):
    """(optax transformation, learning-rate schedule) of ``config.optim``."""
    o, t = config.optim, config.train
    lr = training.make_lr_schedule(
        learning_rate=o.lr,
        warmup_steps=o.warmup_steps,
        decay=o.decay,
        total_steps=max(t.num_steps, o.warmup_steps + 1),
        final_lr_fraction=o.final_lr_fraction,
    )
    opt = training.make_optimizer(
        learning_rate=lr,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        grad_clip_norm=o.grad_clip,
    )
    return opt, lr


def build_model(m: Mapping[str, Any], *, num_classes: int | None) -> models.UNet:
    """The U-Net of ``config.model`` (a preset plus field overrides).

    ``num_classes`` is the dataset's (None for unlabelled data); a class-conditional preset
    on unlabelled data, or a class count that differs from the dataset's, is refused.
    """
    preset = getattr(models, m["preset"])
    kwargs = dict(m["kwargs"])
    fields = {f.name for f in dataclasses.fields(models.UNet)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"Unknown U-Net field(s) {unknown} in config.model.kwargs; fields: "
            f"{', '.join(sorted(fields - {'parent', 'name'}))}."
        )
    model = preset(dtype=_DTYPES[m["dtype"]], **kwargs)
    if model.num_classes and num_classes is None:
        raise ValueError(
            f"Model preset {m['preset']} is class-conditional ({model.num_classes} classes) but "
            "the dataset has no labels; set config.model.kwargs.num_classes=0."
        )
    if model.num_classes and num_classes is not None and model.num_classes != num_classes:
        raise ValueError(
            f"config.model has num_classes={model.num_classes} but the dataset has "
            f"{num_classes} classes; set config.model.kwargs.num_classes={num_classes}."
        )
    return model


def model_fn_for_sampling(
    model: models.UNet, params: Any, *, objective: str, sigma_data: float = 0.5
) -> Callable[..., jax.Array]:
    """``model_fn(x_t, t, labels=None)`` in the samplers' variance-preserving contract.

    For an EDM-trained model t is sigma and the function returns the preconditioned
    denoiser's x_0 ("sample" prediction) of x = x_t sqrt(1 + sigma^2).
    """

    def apply(x, t, labels=None):
        return model.apply({"params": params}, x, t, labels=labels).astype(jnp.float32)

    if objective != "edm":
        return apply

    def edm_fn(x_vp, sigma, labels=None):
        x = x_vp * expand(jnp.sqrt(1.0 + sigma**2), x_vp)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
        f = apply(expand(c_in, x) * x, c_noise, labels)
        return expand(c_skip, x) * x + expand(c_out, x) * f

    return edm_fn


def make_generate_fn(
    model: models.UNet,
    schedule: Any,
    *,
    objective: str,
    prediction_type: str,
    sigma_data: float,
    sampler: str,
    num_steps: int,
    options: Mapping[str, Any],
    guided: bool = True,
) -> Callable[..., jax.Array]:
    """A jitted ``generate(params, noise, keys, labels, guidance_scale) -> x0``.

    ``labels`` None samples unconditionally; otherwise, with ``guided``, classifier-free
    guidance with the null class (``model.num_classes``) as the unconditional input (without
    it, the plain conditional model: half the cost, same as guidance scale 1). Compiled once
    per batch shape: new parameters, noise, seeds, labels or guidance scales reuse it.
    """
    pred = "sample" if objective == "edm" else prediction_type
    options = dict(options)

    def generate(params, noise, keys, labels, guidance_scale):
        fn = model_fn_for_sampling(model, params, objective=objective, sigma_data=sigma_data)
        cond = {}
        if labels is not None and guided:
            null = jnp.full((1,), model.num_classes, jnp.int32)
            fn = classifier_free_guidance(fn, uncond={"labels": null})
            cond = {"labels": labels, "guidance_scale": guidance_scale}
        elif labels is not None:
            cond = {"labels": labels}
        return jaxdiff.sample(
            fn,
            noise,
            schedule=schedule,
            sampler=sampler,
            num_steps=num_steps,
            prediction_type=pred,
            key=keys,
            cond=cond,
            **options,
        )

    return jax.jit(generate)


def per_sample_keys(seed: int, start: int, count: int) -> jax.Array:
    """Keys of samples start..start+count-1: sample i depends on (seed, i) only."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + count))


def per_sample_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """x_T for each sample from its own key (independent of the batch it is drawn in).

    Uses fold_in(key, 2**32 - 1), a stream the samplers (fold_in(key, call index)) never use.
    """
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 2**32 - 1), shape))(keys)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_image_grid(images: np.ndarray, path: str, *, ncol: int | None = None, scale: int = 1):
    """Save images [N, H, W, C] in [-1, 1] as one PNG grid (``scale``x nearest upsampling)."""
    imgs = to_uint8(images)
    n, h, w, c = imgs.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = imgs[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
