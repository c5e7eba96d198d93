"""Guidance around a model function: classifier-free (Ho & Salimans 2022), and gradient
guidance by a classifier or any differentiable score (Dhariwal & Nichol 2021)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.diffusion import expand, to_x0_eps

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


def gradient_guidance(
    model_fn: ModelFn,
    score_fn: Callable[..., jax.Array],
    *,
    schedule: Any,
    prediction_type: str = "epsilon",
    scale: Any = 1.0,
    x0_based: bool = False,
    learned_variance: bool = False,
    score_only: Sequence[str] = (),
) -> ModelFn:
    """Guide a model by the gradient of a differentiable score of x_t (or of its x_0).

    The guided model's score is grad log p_t(x_t) + s g, g = grad_{x_t} score_fn(...)
    (Dhariwal & Nichol 2021, eq. 10-12; with score_fn = log p(y | x_t) this is classifier
    guidance, and with s = 1 the class-conditional score, by Bayes' rule). In the model's
    own parameterisation, with alpha_t, sigma_t of the variance-preserving x_t:

      epsilon:       eps'  = eps - s sigma_t g              (since eps = -sigma_t score)
      sample (x_0):  x_0'  = x_0 + s sigma_t^2 / alpha_t g
      v_prediction:  v'    = v - s sigma_t / alpha_t g

    so every sampler can run the guided model unchanged, and ``s`` may be traced (a
    call-time ``gradient_scale=`` overrides ``scale``, so one jitted loop serves all scales).

    Args:
      model_fn: ``model_fn(x_t, t, **cond) -> output`` in the samplers' contract.
      score_fn: ``score_fn(x, t, **cond) -> [B]``, differentiable in x: e.g. a noisy
        classifier's log p(y | x_t); with ``x0_based`` it receives the model's x_0
        prediction instead of x_t (as CLIP guidance of the predicted image does), and the
        gradient flows back through the model.
      schedule: the training schedule (for alpha_t, sigma_t of the model's t).
      prediction_type: how ``model_fn``'s output is read.
      scale: the guidance scale s, scalar or [B].
      x0_based: score the predicted x_0 rather than x_t.
      learned_variance: the output holds twice x's channels; guide the mean half only.
      score_only: condition names that only ``score_fn`` receives (e.g. the target labels
        of classifier guidance of an unconditional model); every other condition goes to
        both.

    Returns:
      The guided model function, with the signature of ``model_fn``.
    """
    check = {"epsilon", "sample", "v_prediction"}
    if prediction_type not in check:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; allowed: {', '.join(sorted(check))}."
        )

    def guided(x: jax.Array, t: jax.Array, **cond: Any) -> jax.Array:
        s = jnp.asarray(cond.pop("gradient_scale", scale), jnp.float32)
        score_cond = dict(cond)
        cond = {k: v for k, v in cond.items() if k not in score_only}
        alpha = expand(schedule.alpha(t), x)
        sigma = expand(schedule.sigma(t), x)

        def split(out):
            out = out.astype(jnp.float32)
            if learned_variance:
                half = out.shape[-1] // 2
                return out[..., :half], out[..., half:]
            return out, None

        if x0_based:

            def objective(z):
                mean, var = split(model_fn(z, t, **cond))
                x0, _ = to_x0_eps(mean, z, alpha, sigma, prediction_type)
                return jnp.sum(score_fn(x0, t, **score_cond)), (mean, var)

            g, (mean, var) = jax.grad(objective, has_aux=True)(x)
        else:
            mean, var = split(model_fn(x, t, **cond))
            g = jax.grad(lambda z: jnp.sum(score_fn(z, t, **score_cond)))(x)
        s = expand(s, x)
        if prediction_type == "epsilon":
            mean = mean - s * sigma * g
        elif prediction_type == "sample":
            mean = mean + s * sigma**2 / alpha * g
        else:
            mean = mean - s * sigma / alpha * g
        return mean if var is None else jnp.concatenate([mean, var], axis=-1)

    return guided


def classifier_guidance(
    model_fn: ModelFn,
    log_prob_fn: Callable[..., jax.Array],
    *,
    schedule: Any,
    prediction_type: str = "epsilon",
    scale: Any = 1.0,
    learned_variance: bool = False,
    label_key: str = "labels",
    conditional_model: bool = False,
) -> ModelFn:
    """Classifier guidance (Dhariwal & Nichol 2021): :func:`gradient_guidance` with the
    noisy classifier's ``log_prob_fn(x_t, t, **cond) -> log p(y | x_t) [B]``.

    The target classes travel in the condition ``label_key``; they reach the model too only
    with ``conditional_model`` (ADM guides its class-conditional model as well).
    """
    return gradient_guidance(
        model_fn,
        log_prob_fn,
        schedule=schedule,
        prediction_type=prediction_type,
        scale=scale,
        learned_variance=learned_variance,
        score_only=() if conditional_model else (label_key,),
    )
