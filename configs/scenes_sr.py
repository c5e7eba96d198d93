"""A two-stage cascade of the digit scenes (Ho et al. 2021, "Cascaded Diffusion Models"):
an unconditional 8x8 base model and a super-resolution stage 8x8 -> 32x32.

Super-resolution stage (the default): the U-Net of configs/text2img.py without text (two
levels, 32 and 64 channels, on 4x4 pixel patches, v-prediction) denoising the 32x32 scene
given its 8x8 view (4x4 average pooling), upsampled and concatenated. Noise conditioning
augmentation: the 8x8 input is noised at one of 8 levels (t = 0, 125, ..., 875 of the
linear schedule), drawn uniformly in training and told to the model; sampling uses level 1
(t = 125), so the stage repairs a base model's artifacts instead of copying them. Batch 64,
AdamW 2e-3 with cosine decay, 2000 steps. TensorBoard shows the held-out PSNR of DDIM-20
upsampling next to bicubic's; samples/ shows rows of (8x8 input, bicubic, this stage,
original).

Base stage (variant "base"): the DIGITS U-Net, unconditional, on the scenes brought to 8x8
(config.data.image_size=8: the pipeline's bicubic, antialiased resize).

Needs no network. Launch:
  python train.py --config=configs/scenes_sr.py --workdir=workdirs/scenes_sr
  python train.py --config=configs/scenes_sr.py:base --workdir=workdirs/scenes_base8
  python sample.py --workdir=workdirs/scenes_base8 --sr_workdir=workdirs/scenes_sr
  python benchmarks/super_resolution.py
Smoke variants (a few steps, used by the tests): smoke, base_smoke.
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    allowed = ("", "smoke", "base", "base_smoke")
    if variant not in allowed:
        raise ValueError(
            f"Unknown variant {variant!r} of configs/scenes_sr.py; allowed: "
            f"{', '.join(allowed[1:])}."
        )
    c = base_config()
    c.data.name = "digit_scenes"
    c.data.global_batch_size = 64
    c.diffusion.beta_schedule = "linear"
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.final_lr_fraction = 0.05
    c.ema.decay = 0.999
    c.train.num_steps = 3000
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.sample_every = 1000
    c.sample.sampler = "ddim"
    c.sample.num_steps = 20
    c.sample.options = {"clip_sample": False}
    if variant.startswith("base"):
        c.data.image_size = 8
        c.model.preset = "DIGITS"
        c.model.kwargs = dict(num_classes=0)
        c.train.cond_drop_prob = 0.0
        c.sample.num_samples = 64
    else:
        c.task = "super_resolution"
        c.train.num_steps = 2000
        c.model.preset = "DIGITS"
        c.model.patch_size = 4
        c.model.kwargs = dict(
            channels=(32, 64), num_res_blocks=2, attention_levels=(1,), head_dim=32,
            norm_groups=8, dropout=0.0,
        )  # fmt: skip
        c.diffusion.prediction_type = "v_prediction"
        c.super_resolution.factor = 4
        c.super_resolution.augment_levels = 8
        c.super_resolution.sample_level = 1
        c.super_resolution.eval_images = 64
    if variant.endswith("smoke"):
        c.data.builder_kwargs = {"split_sizes": {"train": 256, "test": 32, "heldout": 32}}
        c.model.preset = "TINY"
        if not variant.startswith("base"):
            c.model.kwargs = dict(channels=(16,), attention_levels=(), norm_groups=4)
            c.super_resolution.eval_images = 4
        c.data.global_batch_size = 8
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
        c.sample.num_steps = 3
        c.sample.num_samples = 8
    return c
