"""Flax models: the U-Net family and its presets, the KL autoencoder, text encoders (CLIP,
T5, a small one trained from scratch), patching, the CLIP vision tower, the FID Inception-v3,
a PatchGAN discriminator, and checkpoint conversion (diffusers, transformers and pytorch-fid
layouts)."""

from jaxdiff.models.attention import dot_product_attention, flash_attention
from jaxdiff.models.autoencoder import AutoencoderKL, DiagonalGaussian
from jaxdiff.models.classifier import NoisyClassifier
from jaxdiff.models.clip import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    VisionEncoderOutput,
)
from jaxdiff.models.convert import (
    export_diffusers_unet,
    load_diffusers_unet,
    load_flax_diffusers_unet,
    params_from_state_dict,
    params_to_state_dict,
)
from jaxdiff.models.convert_clip import load_clip
from jaxdiff.models.convert_inception import load_inception
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
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.models.inception import FIDInceptionV3
from jaxdiff.models.patching import Patched
from jaxdiff.models.presets import ADM_IMAGENET64, DDPM_CIFAR10, DIGITS, TINY
from jaxdiff.models.small_text import SmallTextEncoder
from jaxdiff.models.t5 import T5EncoderModel
from jaxdiff.models.text_ops import TextEncoderOutput
from jaxdiff.models.unet import UNet

__all__ = [
    "ADM_IMAGENET64",
    "AutoencoderKL",
    "CLIPModel",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "DDPM_CIFAR10",
    "DIGITS",
    "DiagonalGaussian",
    "FIDInceptionV3",
    "NoisyClassifier",
    "PatchDiscriminator",
    "Patched",
    "SUPPORTED_ARCHITECTURES",
    "SmallTextEncoder",
    "T5EncoderModel",
    "TINY",
    "TextEncoderOutput",
    "UNet",
    "VisionEncoderOutput",
    "dot_product_attention",
    "export_diffusers_unet",
    "export_diffusers_vae",
    "export_text_encoder",
    "flash_attention",
    "load_clip",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "load_flax_diffusers_unet",
    "load_flax_diffusers_vae",
    "load_inception",
    "load_text_encoder",
    "params_from_state_dict",
    "params_to_state_dict",
    "text_encoder_from_config",
]
