"""Flax models: the U-Net family, its presets, the KL autoencoder, and diffusers-format
checkpoint conversion."""

from jaxdiff.models.attention import dot_product_attention, flash_attention
from jaxdiff.models.autoencoder import AutoencoderKL, DiagonalGaussian
from jaxdiff.models.convert import (
    export_diffusers_unet,
    load_diffusers_unet,
    load_flax_diffusers_unet,
    params_from_state_dict,
    params_to_state_dict,
)
from jaxdiff.models.convert_vae import (
    export_diffusers_vae,
    load_diffusers_vae,
    load_flax_diffusers_vae,
)
from jaxdiff.models.presets import ADM_IMAGENET64, DDPM_CIFAR10, DIGITS, TINY
from jaxdiff.models.unet import UNet

__all__ = [
    "ADM_IMAGENET64",
    "AutoencoderKL",
    "DDPM_CIFAR10",
    "DIGITS",
    "DiagonalGaussian",
    "TINY",
    "UNet",
    "dot_product_attention",
    "export_diffusers_unet",
    "export_diffusers_vae",
    "flash_attention",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "load_flax_diffusers_unet",
    "load_flax_diffusers_vae",
    "params_from_state_dict",
    "params_to_state_dict",
]
