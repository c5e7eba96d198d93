"""``config.autoencoder`` -> the KL autoencoder, its discriminator and its train step.

Reads only the sections it names (``autoencoder``, ``optim``, ``ema``, ``data``); nothing here
runs or writes. The run itself is :mod:`jaxdiff.experiment.autoencoder_run`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import models, samplers, training
from jaxdiff.experiment import from_config
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.training import adversarial, vae_objective
from jaxdiff.training.step import TrainStepFn

LAST_LAYER = ("decoder", "conv_out", "kernel")
"""The decoder's last weight in `AutoencoderKL` parameters (the adaptive weight's W)."""
_TUPLE_FIELDS = ("channels", "latents_mean", "latents_std")


def import_callable(spec: str, field: str) -> Callable[..., Any]:
    """The callable named ``"package.module:name"`` (a config value); ValueError naming
    ``field`` when it cannot be imported or is not callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{field}={spec!r} must look like 'package.module:function'.")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{field}={spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"{field}={spec!r} is not callable.")
    return fn


def build_autoencoder(
    autoencoder_config: Mapping[str, Any], *, image_channels: int
) -> models.AutoencoderKL:
    """The `AutoencoderKL` of ``config.autoencoder.kwargs`` for images with ``image_channels``.

    ``in_channels`` / ``out_channels`` default to the images' channels; other values are
    refused. Unknown fields are named with the allowed ones.
    """
    kwargs = dict(autoencoder_config["kwargs"])
    fields = {f.name for f in dataclasses.fields(models.AutoencoderKL)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"Unknown AutoencoderKL field(s) {unknown} in config.autoencoder.kwargs; fields: "
            f"{', '.join(sorted(fields))}."
        )
    for name in ("in_channels", "out_channels"):
        value = kwargs.setdefault(name, image_channels)
        if value != image_channels:
            raise ValueError(
                f"config.autoencoder.kwargs.{name}={value} but the images have "
                f"{image_channels} channels; allowed: {image_channels}."
            )
    for name in _TUPLE_FIELDS:  # a config read back from JSON holds lists
        if kwargs.get(name) is not None:
            kwargs[name] = tuple(kwargs[name])
    return models.AutoencoderKL(**kwargs)


def build_discriminator(autoencoder_config: Mapping[str, Any]) -> PatchDiscriminator | None:
    """The PatchGAN of ``config.autoencoder`` (None when ``disc_start`` is None)."""
    if autoencoder_config["disc_start"] is None:
        return None
    return PatchDiscriminator(
        channels=autoencoder_config["disc_channels"],
        num_layers=autoencoder_config["disc_layers"],
    )


def check_image_size(module: models.AutoencoderKL, image_shape: tuple[int, ...]) -> None:
    """Refuse images whose size is not a multiple of the autoencoder's downsampling factor."""
    f = module.downsampling_factor
    if image_shape[0] % f or image_shape[1] % f:
        raise ValueError(
            f"Images of {image_shape[0]}x{image_shape[1]} pixels do not fit the autoencoder: "
            f"its {len(module.channels)} levels downsample by {f}; allowed: sizes that are "
            f"multiples of {f} (set config.data.image_size)."
        )


def encode_decode_fns(module: models.AutoencoderKL):
    """(encode(params, x) -> posterior, decode(params, z) -> x) of ``module``."""

    def encode(params, x):
        return module.apply({"params": params}, x, method="encode")

    def decode(params, z):
        return module.apply({"params": params}, z, method="decode")

    return encode, decode


def init_params_fn(module: Any, image_shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
    """``key -> fresh parameters`` of a module called on images of ``image_shape``."""

    def init(key):
        return module.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]

    return init


def build_init_fn(
    module: models.AutoencoderKL,
    discriminator: PatchDiscriminator | None,
    image_shape: tuple[int, ...],
    optimizer: optax.GradientTransformation,
) -> Callable[[jax.Array], training.TrainState]:
    """``key -> state``: a `TrainState`, or an `AdversarialTrainState` with a discriminator
    (trained by an optimizer of the same ``config.optim``)."""
    init_ae = init_params_fn(module, image_shape)
    if discriminator is None:
        return training.make_init_fn(init_ae, optimizer)
    return adversarial.make_adversarial_init_fn(
        init_ae, init_params_fn(discriminator, image_shape), optimizer, optimizer
    )


def build_train_step(
    config: ml_collections.ConfigDict,
    module: models.AutoencoderKL,
    discriminator: PatchDiscriminator | None,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
) -> TrainStepFn:
    """The pure train step of ``config.autoencoder`` / ``config.ema`` / ``config.optim``."""
    ae = config.autoencoder
    encode, decode = encode_decode_fns(module)
    perceptual = ae.perceptual_fn and import_callable(
        ae.perceptual_fn, "config.autoencoder.perceptual_fn"
    )
    ema_decay_fn = from_config.build_ema_decay_fn(config)
    losses = dict(
        reconstruction=ae.reconstruction,
        perceptual_fn=perceptual or None,
        perceptual_weight=ae.perceptual_weight,
    )
    if discriminator is None:
        loss_fn = vae_objective.make_vae_loss_fn(encode, decode, kl_weight=ae.kl_weight, **losses)
        return from_config.train_step_of_loss(config, loss_fn, optimizer, learning_rate)
    return adversarial.make_vae_gan_train_step(
        vae_objective.make_vae_terms_fn(encode, decode, **losses),
        lambda p, x: discriminator.apply({"params": p}, x),
        optimizer,
        optimizer,
        last_layer=LAST_LAYER,
        kl_weight=ae.kl_weight,
        disc_start=ae.disc_start,
        disc_weight=ae.disc_weight,
        ema_decay_fn=ema_decay_fn,
        learning_rate_fn=learning_rate,
    )


def psnr(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio per image [N] in dB, for values in [-1, 1] (peak-to-peak 2;
    the same number as for the images mapped to [0, 1] or [0, 255]). Reconstructions are
    clipped to [-1, 1] first, as writing them as images does."""
    x = np.asarray(images, np.float64)
    y = np.clip(np.asarray(reconstructions, np.float64), -1.0, 1.0)
    mse = np.mean(np.square(x - y).reshape(len(x), -1), axis=1)
    return 10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))


_NOT_ARCHITECTURE = ("attention_impl", "remat", "dtype", "param_dtype", "parent", "name")


def module_fields(module: models.AutoencoderKL) -> dict[str, Any]:
    """The fields that define ``module``'s function (JSON values), for run_info.json."""
    return {
        f.name: list(v) if isinstance(v := getattr(module, f.name), tuple) else v
        for f in dataclasses.fields(module)
        if f.name not in _NOT_ARCHITECTURE
    }


def module_from_fields(fields: Mapping[str, Any]) -> models.AutoencoderKL:
    """The inverse of :func:`module_fields`."""
    kwargs = dict(fields)
    for name in _TUPLE_FIELDS:
        if kwargs.get(name) is not None:
            kwargs[name] = tuple(kwargs[name])
    return models.AutoencoderKL(**kwargs)


class LatentDecoder:
    """Decodes a diffusion model's latents to images with a frozen VAE (for a `Generator`).

    Args:
      vae: the autoencoder, with the scaling / shift the latents were made with.
      params: its parameters.
    """

    def __init__(self, vae: models.AutoencoderKL, params: Any):
        self.vae, self.params = vae, params

    def decode(self, params: Any, latents: jax.Array) -> jax.Array:
        """Scaled latents [B, h, w, C] -> images [B, H, W, C] (pure; jit it with params)."""
        return self.vae.apply({"params": params}, latents, method="decode_latents")

    @staticmethod
    def sampler_options(sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Latents are not images in [-1, 1]: samplers that clip x_0 by default (DDIM, DDPM,
        as diffusers' schedulers) get ``clip_sample=False`` unless the options say otherwise,
        as Stable Diffusion's schedulers are configured."""
        options = dict(options)
        factory = samplers.SAMPLERS.get(sampler)
        if factory is not None and "clip_sample" in samplers.option_names(factory):
            options.setdefault("clip_sample", False)
        return options
