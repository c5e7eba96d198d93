"""Flax models: the U-Net family, its presets, and diffusers-format checkpoint conversion."""

from jaxdiff.models.attention import dot_product_attention, flash_attention
from jaxdiff.models.convert import (
    export_diffusers_unet,
    load_diffusers_unet,
    load_flax_diffusers_unet,
    params_from_state_dict,
    params_to_state_dict,
)
from jaxdiff.models.presets import ADM_IMAGENET64, DDPM_CIFAR10, DIGITS, TINY
from jaxdiff.models.unet import UNet

__all__ = [
    "ADM_IMAGENET64",
    "DDPM_CIFAR10",
    "DIGITS",
    "TINY",
    "UNet",
    "dot_product_attention",
    "export_diffusers_unet",
    "flash_attention",
    "load_diffusers_unet",
    "load_flax_diffusers_unet",
    "params_from_state_dict",
    "params_to_state_dict",
]
