"""U-Net presets: `functools.partial`s of `jaxdiff.models.unet.UNet`.

Any field can still be overridden, e.g. ``DDPM_CIFAR10(dropout=0.0, dtype=jnp.bfloat16)``.
"""

from __future__ import annotations

import functools

from jaxdiff.models.unet import UNet

# Ho et al. 2020, "Denoising Diffusion Probabilistic Models", CIFAR-10 model: 35.7M parameters,
# one-head attention at 16x16, dropout 0.1, DDPM's sinusoid (sin first, denominator half - 1)
# and TensorFlow-style (0, 1) padding of the stride-2 convolutions.
DDPM_CIFAR10 = functools.partial(
    UNet,
    channels=(128, 256, 256, 256),
    num_res_blocks=2,
    attention_levels=(1,),
    mid_attention=True,
    dropout=0.1,
    norm_groups=32,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
)

# Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", class-conditional
# ImageNet 64x64 model: 3 ResBlocks per level, attention at 32, 16 and 8 pixels with 64-channel
# heads, scale-shift norm, BigGAN-style resampling ResBlocks, learned variance (6 outputs).
ADM_IMAGENET64 = functools.partial(
    UNet,
    channels=(192, 384, 576, 768),
    num_res_blocks=3,
    attention_levels=(1, 2, 3),
    head_dim=64,
    dropout=0.1,
    num_classes=1000,
    out_channels=6,
    scale_shift_norm=True,
    resample="resnet",
    flip_sin_to_cos=True,
    freq_shift=0,
)

# Small class-conditional model for the 8x8x1 scikit-learn digits (10 classes): levels at 8, 4
# and 2 pixels with 16, 32 and 64 channels (narrow where the pixels are many: the step cost is
# dominated by the 8x8 level), attention at 4x4 and in the middle. 0.65M parameters.
DIGITS = functools.partial(
    UNet,
    channels=(16, 32, 64),
    num_res_blocks=1,
    attention_levels=(1,),
    head_dim=16,
    norm_groups=8,
    dropout=0.1,
    num_classes=10,
)

# For tests only: two levels, one ResBlock each, attention at the second, 10 classes.
TINY = functools.partial(
    UNet,
    channels=(16, 32),
    num_res_blocks=1,
    attention_levels=(1,),
    num_heads=2,
    norm_groups=4,
    num_classes=10,
)
