"""DDPM on CIFAR-10: the recipe of Ho et al. 2020 (35.7M-parameter U-Net, 800k steps).

Linear betas 1e-4..0.02 over 1000 steps, epsilon prediction, batch 128, Adam lr 2e-4 with
5000 warm-up steps, dropout 0.1, EMA 0.9999, gradient clipping at 1, random flips.
Needs CIFAR-10 prepared once (TensorFlow for preparation: pip install 'jaxdiff[tf]').

Launch (8 accelerators, data-parallel; add --config.train.fsdp=8 to shard parameters):
  python train.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm \
      --config.data.download=True
Smoke variant (tiny model, a few steps on any image folder; used by the tests):
  python train.py --config=configs/cifar10_ddpm.py:smoke --workdir=/tmp/cifar_smoke \
      --config.data.path=/path/to/a/folder/of/32x32/pngs
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "cifar10"
    c.data.global_batch_size = 128
    c.data.random_flip = True
    c.model.preset = "DDPM_CIFAR10"
    c.diffusion.beta_schedule = "linear"
    c.diffusion.beta_start = 0.0001
    c.diffusion.beta_end = 0.02
    c.diffusion.num_train_timesteps = 1000
    c.diffusion.prediction_type = "epsilon"
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.decay = "constant"
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.9999
    c.ema.warmup = False
    c.train.num_steps = 800_000
    c.train.log_every = 500
    c.train.save_every = 10_000
    c.train.sample_every = 50_000
    c.train.cond_drop_prob = 0.0
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 1000
    c.sample.num_samples = 64
    c.sample.options = {"clip_sample": True}
    if variant == "smoke":
        _smoke(c)
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of configs/cifar10_ddpm.py; allowed: smoke.")
    return c


def _smoke(c):
    c.data.name = "image_folder"  # the tests point data.path at a folder of 32x32 PNGs
    c.data.image_size = 32
    c.data.global_batch_size = 8
    c.model.preset = "TINY"
    c.model.kwargs = {"num_classes": None}
    c.optim.warmup_steps = 2
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.save_every = 2
    c.train.sample_every = 4
    c.train.progress = False
    c.sample.sampler = "ddim"
    c.sample.num_steps = 3
    c.sample.num_samples = 4
