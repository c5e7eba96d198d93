"""``config.latent``: a diffusion run in the latent space of a trained, frozen VAE.

``config.latent.vae`` names the VAE: a jaxdiff autoencoder workdir (``task="autoencoder"``;
its EMA parameters of ``vae_step``, default the newest readable checkpoint) or a diffusers
``AutoencoderKL`` directory (``vae/`` with config.json and safetensors / ``.bin`` /
Flax msgpack weights, or a pipeline directory holding one). The U-Net is trained on
``(z - shift) * scaling_factor`` of posterior samples z (see `jaxdiff.training.latent`); the
scaling factor is the VAE's own, ``config.latent.scaling_factor``, or, with
``estimate_scaling_factor``, 1 / std of the latents of the first ``estimate_examples``
training images (as LDM estimates it). What was used is recorded: the resolved
``config.latent`` (``vae_step``, ``scaling_factor``) is the config saved with every
checkpoint, and run_info.json holds the VAE's fields, source and a hash of its weights (a
resume on another VAE is refused), so that sampling needs only the run's own workdir (the
VAE's parameters are in its checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import models, training
from jaxdiff.experiment import autoencoder as ae_lib
from jaxdiff.experiment import from_config, latent_cache
from jaxdiff.experiment.autoencoder_run import load_autoencoder_workdir
from jaxdiff.experiment.workdir import RUN_INFO
from jaxdiff.models import state_dict as sd
from jaxdiff.training import latent as latent_training

ESTIMATE_SALT = 0x5CA1E


def load_vae(source: str, step: int | None = None) -> tuple[models.AutoencoderKL, Any, int | None]:
    """(module, params, checkpoint step or None) of a jaxdiff autoencoder workdir or a
    diffusers VAE directory (module docstring)."""
    path = os.path.abspath(source)
    if not os.path.isdir(path):
        raise ValueError(f"config.latent.vae={source!r} is not a directory.")
    if os.path.exists(os.path.join(path, RUN_INFO)):
        return load_autoencoder_workdir(path, step=step)
    if step is not None:
        raise ValueError(
            f"config.latent.vae_step={step} selects a checkpoint of a jaxdiff workdir; "
            f"{path} is not one (no {RUN_INFO}): set vae_step=None."
        )
    vae_dir = path
    if not os.path.exists(os.path.join(path, sd.CONFIG_NAME)):  # a pipeline directory?
        vae_dir = os.path.join(path, "vae")
    if not os.path.exists(os.path.join(vae_dir, sd.CONFIG_NAME)):
        raise ValueError(
            f"config.latent.vae={source!r} is neither a jaxdiff autoencoder workdir (no "
            f"{RUN_INFO}) nor a diffusers VAE directory (no {sd.CONFIG_NAME} in it or in vae/)."
        )
    torch_files = (sd.SAFETENSORS_NAME, sd.BIN_NAME)
    if not any(os.path.exists(os.path.join(vae_dir, f)) for f in torch_files) and os.path.exists(
        os.path.join(vae_dir, sd.FLAX_NAME)
    ):
        module, params = models.load_flax_diffusers_vae(vae_dir)
    else:
        module, params = models.load_diffusers_vae(vae_dir)
    return module, params, None


@dataclasses.dataclass
class LatentSpace:
    """The frozen VAE of a run and what it turns the data into.

    Attributes:
      vae: the autoencoder, with the scaling factor the run uses.
      params: its parameters.
      source: the VAE's directory (absolute).
      step: the checkpoint step of a jaxdiff workdir (None for a diffusers directory).
      image_shape: (H, W, C) of the images.
      moments: cached posterior moments of the training split by record index, or None.
      estimated_from: how many images the scaling factor was estimated from (None: given).
      digest: sha256 of the VAE's parameters (a resume on other weights is refused).
    """

    vae: models.AutoencoderKL
    params: Any
    source: str
    step: int | None
    image_shape: tuple[int, int, int]
    moments: np.ndarray | None = None
    estimated_from: int | None = None
    digest: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(h, w, latent_channels): what the U-Net sees."""
        f = self.vae.downsampling_factor
        h, w, _ = self.image_shape
        return (h // f, w // f, self.vae.latent_channels)

    def run_info(self) -> dict[str, Any]:
        """The ``latent`` entry of run_info.json (module docstring)."""
        return {
            "latent": {
                "vae": self.source,
                "vae_step": self.step,
                "vae_params_sha256": self.digest,
                "autoencoder": ae_lib.module_fields(self.vae),
                "image_shape": list(self.image_shape),
                "scaling_factor_estimated_from": self.estimated_from,
            }
        }

    def resolved_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """``config`` with the VAE's path, step and scaling factor as they were used."""
        config = config.copy_and_resolve_references()
        config.latent.vae = self.source
        config.latent.vae_step = self.step
        config.latent.scaling_factor = float(self.vae.scaling_factor)
        config.latent.estimate_scaling_factor = False
        return config

    def add_to_state(self, state: Any, shardings: Any, mesh: jax.sharding.Mesh):
        """(state, shardings) with the VAE's parameters replicated over ``mesh``."""
        vae_params = _replicate(self.params, mesh)
        repl = jax.tree.map(lambda _: training.replicated(mesh), vae_params)
        return (
            latent_training.with_vae_params(state, vae_params),
            latent_training.with_vae_params(shardings, repl),
        )

    def wrap_train_step(self, train_step: Any) -> Any:
        """The latent step around a pixel-space train step (`jaxdiff.training.latent`)."""
        encode, _ = ae_lib.encode_decode_fns(self.vae)
        return latent_training.make_latent_train_step(
            train_step,
            to_latents=self.vae.to_latents,
            encode_fn=None if self.moments is not None else encode,
            moments_key=latent_cache.MOMENTS_KEY,
        )

    def wrap_pipeline(self, pipeline: Any) -> Any:
        """The training pipeline (built ``with_index=True``), on cached moments if any."""
        if self.moments is None:
            return pipeline
        return latent_cache.CachedMoments(pipeline, self.moments)

    def decoder(self, mesh: jax.sharding.Mesh | None = None) -> ae_lib.LatentDecoder:
        """A decoder for sample grids (its own copy of the parameters, on ``mesh``)."""
        params = self.params if mesh is None else _replicate(self.params, mesh)
        return ae_lib.LatentDecoder(self.vae, params)


def _replicate(params: Any, mesh: jax.sharding.Mesh) -> Any:
    """A copy of ``params`` on every device of ``mesh`` (also across processes)."""
    repl = training.replicated(mesh)

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, repl, lambda index: x[index])

    return jax.tree.map(put, params)


def open_latent_space(
    config: ml_collections.ConfigDict, dataset: from_config.ImageDataset, workdir: str
) -> LatentSpace:
    """Load ``config.latent.vae``, check it against the data and the U-Net, cache the
    split's moments (``config.latent.cache``) and settle the scaling factor."""
    latent = config.latent
    vae, params, step = load_vae(latent.vae, latent.vae_step)
    source = os.path.abspath(latent.vae)
    _check_vae(vae, dataset.image_shape, source)
    check_unet_channels(config, dataset.num_classes, vae.latent_channels, source)
    digest = latent_cache.params_digest(params)
    space = LatentSpace(vae, params, source, step, dataset.image_shape, digest=digest)
    if latent.cache:
        space.moments = _cached_moments(space, config.data, dataset.builder, workdir)
    if latent.scaling_factor is not None:
        space.vae = space.vae.clone(scaling_factor=latent.scaling_factor)
    elif latent.estimate_scaling_factor:
        n = latent.estimate_examples
        moments = space.moments
        if moments is None:
            moments = _encode(space, config.data, dataset.builder, limit=n)
        moments = moments[:n]
        key = jax.random.fold_in(jax.random.key(config.seed), ESTIMATE_SALT)
        space.vae = space.vae.clone(scaling_factor=estimate_scaling_factor(vae, moments, key))
        space.estimated_from = len(moments)
    return space


def estimate_scaling_factor(vae: models.AutoencoderKL, moments: np.ndarray, key: jax.Array):
    """1 / std of the latents (shifted, unscaled) of posterior samples of ``moments``
    [N, h, w, 2C] (mean, logvar), one sample each drawn from ``key``."""
    mean, logvar = np.split(np.asarray(moments, np.float32), 2, axis=-1)
    eps = np.asarray(jax.random.normal(key, mean.shape, np.float32))
    z = mean + np.exp(0.5 * logvar) * eps
    unit = np.asarray(vae.clone(scaling_factor=1.0).to_latents(z), np.float64)
    return float(1.0 / unit.std())


def check_unet_channels(
    config: ml_collections.ConfigDict, num_classes: int | None, latent_channels: int, source: str
) -> None:
    """Refuse a U-Net whose output channels are not the VAE's latent channels (its input
    channels are the latents', by construction)."""
    model = from_config.build_model(config.model, num_classes=num_classes)
    out = model.out_channels or latent_channels
    want = 2 * latent_channels if config.diffusion.learned_variance else latent_channels
    if out != want:
        why = " (twice: config.diffusion.learned_variance)" if want != latent_channels else ""
        raise ValueError(
            f"config.model: the U-Net outputs {out} channels but the VAE {source} has "
            f"latent_channels={latent_channels}; the U-Net's input and output are latents, so "
            f"allowed: out_channels={want}{why} or None. Set "
            f"config.model.kwargs.out_channels={want}."
        )


def _check_vae(vae: models.AutoencoderKL, image_shape: tuple[int, int, int], source: str):
    if vae.in_channels != image_shape[-1]:
        raise ValueError(
            f"The VAE {source} takes {vae.in_channels}-channel images but the data has "
            f"{image_shape[-1]} channels; allowed: a VAE with in_channels={image_shape[-1]}."
        )
    ae_lib.check_image_size(vae, image_shape)


def _encode(space: LatentSpace, data_config, builder, limit: int | None = None) -> np.ndarray:
    return latent_cache.encode_split(
        space.vae,
        space.params,
        builder,
        split=data_config.split,
        image_size=data_config.image_size,
        limit=limit,
    )


def _cached_moments(space: LatentSpace, data_config, builder, workdir: str) -> np.ndarray:
    fingerprint = {
        "vae": space.source,
        "vae_step": space.step,
        "vae_params_sha256": space.digest,
        "dataset": data_config.name,
        "split": data_config.split,
        "image_size": data_config.image_size,
        "num_records": data_lib.dataset_metadata(builder).split_sizes[data_config.split],
    }
    return latent_cache.load_or_encode(
        workdir, fingerprint, lambda: _encode(space, data_config, builder)
    )
