"""The diffusion training objective as a :data:`jaxdiff.training.step.LossFn`.

Wraps a Flax model's ``apply`` (the U-Net convention
``apply({"params": p}, x_t, t, labels=..., context=..., train=True, rngs={"dropout": k})``)
into ``loss_fn(params, batch, example_keys, batch_key) -> (loss [B], aux)``:

- timesteps, noise and the classifier-free-guidance condition dropout are drawn per example
  from ``example_keys``, so results do not depend on how the batch is split;
- condition dropout (Ho & Salimans 2022) replaces a label by the null id (``num_classes``)
  and zeroes a context with probability ``cond_drop_prob``; other batch entries named in
  ``null_conditions`` (e.g. a caption's token ids) are replaced by their null value (the
  empty caption's ids) and passed to the model under their batch names;
- mixed precision: with ``compute_dtype`` (e.g. bfloat16) the float parameters and model
  inputs are cast for the forward pass only; parameters, gradients and the optimizer state
  stay float32 and the loss is computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import diffusion, losses
from jaxdiff.training.step import LossFn

OBJECTIVES = ("diffusion", "edm")


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _check(objective, prediction_type, weighting, cond_drop_prob, learned_variance, vlb_weight):
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; allowed: {OBJECTIVES}.")
    diffusion.check_prediction_type(prediction_type)
    if weighting not in losses.WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; allowed: {losses.WEIGHTINGS}.")
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1]; got {cond_drop_prob}.")
    if learned_variance and objective != "diffusion":
        raise ValueError(
            f"learned_variance trains with the hybrid loss of objective='diffusion'; got "
            f"objective={objective!r} (EDM's denoiser has no variance output)."
        )
    if not vlb_weight >= 0.0:
        raise ValueError(f"vlb_weight must be >= 0; got {vlb_weight}.")


def make_diffusion_loss_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    schedule: Any,
    objective: str = "diffusion",
    prediction_type: str = "epsilon",
    weighting: str = "uniform",
    weighting_options: Mapping[str, Any] | None = None,
    cond_drop_prob: float = 0.0,
    null_label: int | None = None,
    null_conditions: Mapping[str, Any] | None = None,
    learned_variance: bool = False,
    vlb_weight: float = 0.001,
    compute_dtype: Any = None,
    image_key: str = "image",
    label_key: str = "label",
    context_key: str = "context",
) -> LossFn:
    """A per-example diffusion loss over a batch dict, for :func:`make_train_step`.

    Args:
      apply_fn: the model's ``apply`` (U-Net calling convention, see the module docstring).
      schedule: a schedule from :mod:`jaxdiff.schedules` (an ``EDMSchedule`` for "edm").
      objective: "diffusion" (:func:`jaxdiff.losses.diffusion_loss`) or "edm"
        (:func:`jaxdiff.losses.edm_loss` around EDM's preconditioned denoiser).
      prediction_type: "epsilon", "sample" or "v_prediction" ("diffusion" only).
      weighting: a name from ``jaxdiff.losses.WEIGHTINGS`` ("diffusion" only).
      weighting_options: e.g. ``{"min_snr_gamma": 5.0}``.
      cond_drop_prob: probability of dropping an example's condition (CFG training).
      null_label: the label id meaning "no class" (the model's ``num_classes``); needed when
        the batch has labels and ``cond_drop_prob > 0``.
      null_conditions: batch entries that are model inputs, each with the value [...] that
        replaces a dropped example's (e.g. ``{"input_ids": empty caption ids [L]}``, see
        `jaxdiff.training.text_conditioning`); passed to the model as keyword arguments.
      learned_variance: the model returns twice the image channels (prediction, then
        variance values in [-1, 1], read as in the "ddpm" sampler's
        ``variance_type="learned_range"``); trained with the hybrid loss of Nichol &
        Dhariwal 2021 ("diffusion" with a discrete schedule only).
      vlb_weight: lambda of the hybrid loss (0.001 in the paper).
      compute_dtype: dtype of the forward pass (e.g. ``jnp.bfloat16``): casts every float
        parameter and the input. For a model with its own ``dtype`` attribute (the jaxdiff
        U-Net keeps normalisation statistics in float32 that way) prefer the model's dtype
        and leave this None.
      image_key: batch entry holding clean data x0 [B, H, W, C].
      label_key: batch entry holding integer labels [B] (optional in the batch).
      context_key: batch entry holding a context [B, L, D] (optional in the batch).

    Returns:
      ``loss_fn(params, batch, example_keys, batch_key) -> (loss [B], {})``.
    """
    _check(objective, prediction_type, weighting, cond_drop_prob, learned_variance, vlb_weight)
    if learned_variance:
        losses.check_learned_variance(schedule, prediction_type)
    options = dict(weighting_options or {})
    nulls = {k: jnp.asarray(v) for k, v in (null_conditions or {}).items()}

    def loss_fn(params, batch, example_keys, batch_key):
        if cond_drop_prob > 0 and label_key in batch and null_label is None:
            raise ValueError(
                "cond_drop_prob > 0 with labels in the batch needs null_label (the model's "
                "num_classes, used as the 'no class' id)."
            )
        x0 = jnp.asarray(batch[image_key], jnp.float32)
        k_t, k_noise, k_drop = _split3(example_keys)
        t = jax.vmap(lambda k: losses.sample_timesteps(k, 1, schedule)[0])(k_t)
        noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(k_noise)
        drop = jax.vmap(lambda k: jax.random.bernoulli(k, cond_drop_prob))(k_drop)
        cond = _dropped_conditions(batch, drop, label_key, context_key, null_label)
        cond.update(_replaced_where_dropped(batch, drop, nulls))
        p = params if compute_dtype is None else _cast_floats(params, compute_dtype)

        def model_fn(x, time):
            if compute_dtype is not None:
                x = x.astype(compute_dtype)
            out = apply_fn({"params": p}, x, time, **cond, train=True, rngs={"dropout": batch_key})
            return out.astype(jnp.float32)

        if objective == "edm":
            denoiser = losses.edm_denoiser(model_fn, schedule.sigma_data)
            return losses.edm_loss(
                denoiser, x0, k_t[0], schedule=schedule, sigma=t, noise=noise
            ), {}
        loss = losses.diffusion_loss(
            model_fn,
            x0,
            k_t[0],
            schedule=schedule,
            prediction_type=prediction_type,
            weighting=weighting,
            t=t,
            noise=noise,
            learned_variance=learned_variance,
            vlb_weight=vlb_weight,
            **options,
        )
        return loss, {}

    return loss_fn


def _split3(keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    return parts[:, 0], parts[:, 1], parts[:, 2]


def _dropped_conditions(
    batch: Mapping[str, Any],
    drop: jax.Array,
    label_key: str,
    context_key: str,
    null_label: int | None,
) -> dict[str, jax.Array]:
    """Model keyword arguments (labels / context) with dropped conditions replaced."""
    cond = {}
    if label_key in batch:
        labels = jnp.asarray(batch[label_key], jnp.int32)
        if null_label is not None:
            labels = jnp.where(drop, jnp.int32(null_label), labels)
        cond["labels"] = labels
    if context_key in batch:
        context = jnp.asarray(batch[context_key])
        keep = (~drop).astype(context.dtype).reshape((-1,) + (1,) * (context.ndim - 1))
        cond["context"] = context * keep
    return cond


def _replaced_where_dropped(
    batch: Mapping[str, Any], drop: jax.Array, nulls: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """The ``null_conditions`` entries of the batch, with dropped examples' rows replaced."""
    out = {}
    for name, null in nulls.items():
        if name not in batch:
            raise ValueError(
                f"null_conditions names {name!r}, which the batch lacks: {sorted(batch)}."
            )
        value = jnp.asarray(batch[name])
        where = drop.reshape((-1,) + (1,) * (value.ndim - 1))
        out[name] = jnp.where(where, null.astype(value.dtype), value)
    return out
