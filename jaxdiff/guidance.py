"""Classifier-free guidance (Ho & Salimans 2022) around a conditional model function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.diffusion import expand

ModelFn = Callable[..., jax.Array]


def rescale_guidance(guided: jax.Array, cond_out: jax.Array, guidance_rescale: Any) -> jax.Array:
    """Guidance rescale (Lin et al. 2023, eq. 15-16): match the per-sample std of the guided
    output to the conditional one, mixed with weight ``guidance_rescale`` (phi)."""
    axes = tuple(range(1, guided.ndim))
    std_c = jnp.std(cond_out, axis=axes, keepdims=True)
    std_g = jnp.std(guided, axis=axes, keepdims=True)
    rescaled = guided * (std_c / std_g)
    phi = expand(jnp.asarray(guidance_rescale, jnp.float32), guided)
    return phi * rescaled + (1.0 - phi) * guided


def classifier_free_guidance(
    model_fn: ModelFn,
    *,
    uncond: Mapping[str, Any],
    guidance_scale: Any = 1.0,
    guidance_rescale: Any = 0.0,
    learned_variance: bool = False,
) -> ModelFn:
    """Wrap a conditional ``model_fn(x, t, **cond)`` into a guided one with the same signature.

    The conditional and unconditional outputs come from ONE model call on the doubled batch
    [x; x] with conditions [cond; uncond]; then out = u + w (c - u), w the guidance scale
    (w = 1: conditional model, w = 0: unconditional). ``uncond`` holds the conditions of the
    second half: the null class / empty-prompt context, or a negative condition (negative
    prompting). Every value may be a traced array; ``guidance_scale`` may be a scalar or
    per-sample [B]. Call-time keyword arguments ``guidance_scale=`` / ``guidance_rescale=`` /
    ``uncond=`` override the ones given here, so a single wrapped function can be reused (and
    a jitted sampling loop over it compiled once) for any scale.

    Args:
      model_fn: conditional model, ``model_fn(x, t, **cond) -> output``.
      uncond: the unconditional (or negative) conditions, keyed like ``cond``; each value
        has the batch size of x (or broadcasts to it).
      guidance_scale: w, scalar or [B].
      guidance_rescale: phi of Lin et al. 2023 (0 disables), scalar or [B].
      learned_variance: the output holds twice x's channels (mean, variance values); guide
        the mean half only and keep the conditional variance.

    Returns:
      The guided model function.
    """

    def guided(x: jax.Array, t: jax.Array, **cond: Any) -> jax.Array:
        scale = cond.pop("guidance_scale", guidance_scale)
        rescale = cond.pop("guidance_rescale", guidance_rescale)
        negative = cond.pop("uncond", uncond)
        missing = set(cond) ^ set(negative)
        if missing:
            raise ValueError(
                f"cond and uncond must have the same keys; mismatched: {sorted(missing)}."
            )
        b = x.shape[0]
        both = {k: jnp.concatenate([_batch(cond[k], b), _batch(negative[k], b)]) for k in cond}
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), **both)
        out = out.astype(jnp.float32)
        c, u = out[:b], out[b:]
        var = None
        if learned_variance:
            half = c.shape[-1] // 2
            c, var, u = c[..., :half], c[..., half:], u[..., :half]
        w = expand(jnp.asarray(scale, jnp.float32), c)
        g = u + w * (c - u)
        if not (isinstance(rescale, int | float) and rescale == 0):
            g = rescale_guidance(g, c, rescale)
        return g if var is None else jnp.concatenate([g, var], axis=-1)

    return guided


def _batch(value: Any, b: int) -> jax.Array:
    """A condition with leading batch dimension b (scalars and size-1 batches broadcast)."""
    value = jnp.asarray(value)
    if value.ndim == 0:
        return jnp.broadcast_to(value, (b,))
    if value.shape[0] == 1 and b != 1:
        return jnp.broadcast_to(value, (b, *value.shape[1:]))
    if value.shape[0] != b:
        raise ValueError(f"A condition has batch size {value.shape[0]}; expected {b} (or 1).")
    return value
