"""The KL-autoencoder objective of latent diffusion (Rombach et al. 2022) as a per-example loss.

For an image x with posterior q(z | x) = N(mean, exp(logvar)) and reconstruction x' = D(z),
z ~ q(z | x) (one sample per example, from that example's key), the loss of each example is

    L = sum_pixels |x - x'|  (or (x - x')^2)  +  w_p * n * P(x, x')  +  w_kl * KL(q || N(0, I))

as in LDM's ``LPIPSWithDiscriminator`` without its learned output variance: the
reconstruction error and the KL divergence are *summed* over image and latent elements (so
LDM's ``kl_weight`` of about 1e-6 means the same here), and the perceptual distance P of a
user-supplied feature function is added to every pixel's error, i.e. counted n = H x W x C
times. P(x, x') = sum over feature maps f of the mean of (f(x) - f(x'))^2 over f's elements.

The optional PatchGAN term lives in :mod:`jaxdiff.training.adversarial` and reuses
:func:`make_vae_terms_fn`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff.training.step import LossFn

RECONSTRUCTION_LOSSES = ("l1", "l2")

EncodeFn = Callable[[Any, jax.Array], Any]
"""``encode(params, images) -> posterior`` with ``mean`` and ``logvar`` [B, h, w, C] and
``kl()`` [B], e.g. :class:`jaxdiff.models.DiagonalGaussian` (``AutoencoderKL.encode``)."""
DecodeFn = Callable[[Any, jax.Array], jax.Array]
"""``decode(params, z) -> images`` [B, H, W, C]."""
FeatureFn = Callable[[jax.Array], jax.Array | Sequence[jax.Array]]
"""``features(images [B, H, W, C] in [-1, 1]) -> one array or a sequence of arrays [B, ...]``."""


def _per_example_sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def _per_example_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def reconstruction_loss(x: jax.Array, x_rec: jax.Array, kind: str = "l1") -> jax.Array:
    """sum |x - x_rec| ("l1") or sum (x - x_rec)^2 ("l2") over each example's elements: [B]."""
    check_vae_options(kind, 0.0, 0.0)
    diff = x_rec.astype(jnp.float32) - x.astype(jnp.float32)
    return _per_example_sum(jnp.abs(diff) if kind == "l1" else jnp.square(diff))


def perceptual_loss(features: FeatureFn, x: jax.Array, x_rec: jax.Array) -> jax.Array:
    """P(x, x_rec) = sum over feature arrays of mean (f(x) - f(x_rec))^2 per example: [B]."""

    def as_list(out):
        return [out] if isinstance(out, jax.Array) else list(out)

    fa, fb = as_list(features(x)), as_list(features(x_rec))
    if not fa or len(fa) != len(fb):
        raise ValueError(f"The feature function returned {len(fa)} and {len(fb)} arrays.")
    terms = [
        _per_example_mean(jnp.square(a.astype(jnp.float32) - b))
        for a, b in zip(fa, fb, strict=True)
    ]
    return sum(terms[1:], terms[0])


def sample_posterior(mean: jax.Array, logvar: jax.Array, example_keys: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) eps with each example's eps drawn from its own key."""
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], jnp.float32))(example_keys)
    return mean + jnp.exp(0.5 * logvar) * eps.astype(mean.dtype)


class VaeTerms(NamedTuple):
    """One forward pass of the autoencoder on a batch (see :func:`make_vae_terms_fn`)."""

    images: jax.Array  # [B, H, W, C], the batch's images
    reconstructions: jax.Array  # [B, H, W, C], decoded posterior samples
    nll: jax.Array  # [B], reconstruction (+ perceptual) error
    kl: jax.Array  # [B], KL of the posterior to N(0, I)
    aux: dict[str, jax.Array]  # per-example parts of nll, for the metrics


def check_vae_options(reconstruction: str, kl_weight: float, perceptual_weight: float) -> None:
    """Raise ValueError naming a bad option of the VAE objective."""
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(
            f"Unknown reconstruction loss {reconstruction!r}; allowed: {RECONSTRUCTION_LOSSES}."
        )
    if not kl_weight >= 0 or not perceptual_weight >= 0:
        raise ValueError(
            f"kl_weight and perceptual_weight must be >= 0; got {kl_weight}, {perceptual_weight}."
        )


def make_vae_terms_fn(
    encode_fn: EncodeFn,
    decode_fn: DecodeFn,
    *,
    reconstruction: str = "l1",
    perceptual_fn: FeatureFn | None = None,
    perceptual_weight: float = 1.0,
    image_key: str = "image",
) -> Callable[[Any, Mapping[str, Any], jax.Array], VaeTerms]:
    """``terms(params, batch, example_keys) -> VaeTerms``: encode, sample, decode, compare.

    Args:
      encode_fn: see :data:`EncodeFn`.
      decode_fn: see :data:`DecodeFn`.
      reconstruction: "l1" or "l2" (module docstring).
      perceptual_fn: optional frozen feature function (:data:`FeatureFn`); None: no term.
      perceptual_weight: w_p of the module docstring.
      image_key: batch entry holding the images [B, H, W, C] in [-1, 1].

    Returns:
      The terms function; ``example_keys`` holds one PRNG key per example.
    """
    check_vae_options(reconstruction, 0.0, perceptual_weight)

    def terms(params, batch, example_keys):
        x = jnp.asarray(batch[image_key], jnp.float32)
        posterior = encode_fn(params, x)
        z = sample_posterior(posterior.mean, posterior.logvar, example_keys)
        x_rec = decode_fn(params, z)
        x_rec = x_rec.astype(jnp.float32)
        rec = reconstruction_loss(x, x_rec, reconstruction)
        aux = {"reconstruction": rec}
        nll = rec
        if perceptual_fn is not None:
            p = perceptual_loss(perceptual_fn, x, x_rec)
            aux["perceptual"] = p
            nll = nll + perceptual_weight * x[0].size * p
        return VaeTerms(x, x_rec, nll, posterior.kl(), aux)

    return terms


def make_vae_loss_fn(
    encode_fn: EncodeFn,
    decode_fn: DecodeFn,
    *,
    reconstruction: str = "l1",
    kl_weight: float = 1e-6,
    perceptual_fn: FeatureFn | None = None,
    perceptual_weight: float = 1.0,
    image_key: str = "image",
) -> LossFn:
    """The per-example VAE loss L of the module docstring, for :func:`make_train_step`.

    Args:
      encode_fn: see :data:`EncodeFn`.
      decode_fn: see :data:`DecodeFn`.
      reconstruction: "l1" or "l2".
      kl_weight: w_kl (LDM: 1e-6).
      perceptual_fn: optional frozen feature function; None: no perceptual term.
      perceptual_weight: w_p.
      image_key: batch entry holding the images.

    Returns:
      ``loss_fn(params, batch, example_keys, batch_key) -> (loss [B], aux)`` with aux
      ``reconstruction``, ``kl`` and (with a feature function) ``perceptual``, each [B].
    """
    check_vae_options(reconstruction, kl_weight, perceptual_weight)
    terms_fn = make_vae_terms_fn(
        encode_fn,
        decode_fn,
        reconstruction=reconstruction,
        perceptual_fn=perceptual_fn,
        perceptual_weight=perceptual_weight,
        image_key=image_key,
    )

    def loss_fn(params, batch, example_keys, batch_key):
        del batch_key  # the autoencoder has no dropout
        t = terms_fn(params, batch, example_keys)
        return t.nll + kl_weight * t.kl, {**t.aux, "kl": t.kl}

    return loss_fn
