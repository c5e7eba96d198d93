"""Flax models: the U-Net family and its presets, the KL autoencoder, text encoders (CLIP,
T5, a small one trained from scratch), patching, and checkpoint conversion (diffusers and
transformers layouts)."""

from jaxdiff.models.attention import dot_product_attention, flash_attention
from jaxdiff.models.autoencoder import AutoencoderKL, DiagonalGaussian
from jaxdiff.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from jaxdiff.models.convert import (
    export_diffusers_unet,
    load_diffusers_unet,
    load_flax_diffusers_unet,
    params_from_state_dict,
    params_to_state_dict,
)
from jaxdiff.models.convert_text import (
    SUPPORTED_ARCHITECTURES,
    export_text_encoder,
    load_text_encoder,
    text_encoder_from_config,
)
from jaxdiff.models.convert_vae import (
    export_diffusers_vae,
    load_diffusers_vae,
    load_flax_diffusers_vae,
)
from jaxdiff.models.patching import Patched
from jaxdiff.models.presets import ADM_IMAGENET64, DDPM_CIFAR10, DIGITS, TINY
from jaxdiff.models.small_text import SmallTextEncoder
from jaxdiff.models.t5 import T5EncoderModel
from jaxdiff.models.text_ops import TextEncoderOutput
from jaxdiff.models.unet import UNet

__all__ = [
    "ADM_IMAGENET64",
    "AutoencoderKL",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "DDPM_CIFAR10",
    "DIGITS",
    "DiagonalGaussian",
    "Patched",
    "SUPPORTED_ARCHITECTURES",
    "SmallTextEncoder",
    "T5EncoderModel",
    "TINY",
    "TextEncoderOutput",
    "UNet",
    "dot_product_attention",
    "export_diffusers_unet",
    "export_diffusers_vae",
    "export_text_encoder",
    "flash_attention",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "load_flax_diffusers_unet",
    "load_flax_diffusers_vae",
    "load_text_encoder",
    "params_from_state_dict",
    "params_to_state_dict",
    "text_encoder_from_config",
]
