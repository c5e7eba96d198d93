"""EDM on CIFAR-10 (Karras et al. 2022): preconditioned denoiser, log-normal sigma training,
EMA with a half-life of 500k images, deterministic Heun sampling with 18 steps (35 NFE).

The network here is the DDPM++-size jaxdiff U-Net (DDPM_CIFAR10 preset, dropout 0.13)
rather than EDM's exact SongUNet; the objective, preconditioning, schedule and sampler are
EDM's. Needs CIFAR-10 prepared once (pip install 'jaxdiff[tf]').

Launch:
  python train.py --config=configs/cifar10_edm.py --workdir=workdirs/cifar10_edm \
      --config.data.download=True
Smoke variant (tiny model, a few steps on any image folder; used by the tests):
  python train.py --config=configs/cifar10_edm.py:smoke --workdir=/tmp/edm_smoke \
      --config.data.path=/path/to/a/folder/of/32x32/pngs
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "cifar10"
    c.data.global_batch_size = 512
    c.data.random_flip = True
    c.model.preset = "DDPM_CIFAR10"
    c.model.kwargs = {"dropout": 0.13}
    c.diffusion.objective = "edm"
    c.diffusion.sigma_data = 0.5
    c.diffusion.p_mean = -1.2
    c.diffusion.p_std = 1.2
    c.diffusion.sigma_min = 0.002
    c.diffusion.sigma_max = 80.0
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20_000  # EDM ramps the lr up over 10M images
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = None
    c.ema.decay = None
    c.ema.half_life_images = 500_000
    c.train.num_steps = 390_000  # 200M images at batch 512
    c.train.log_every = 500
    c.train.save_every = 10_000
    c.train.sample_every = 50_000
    c.train.cond_drop_prob = 0.0
    c.sample.sampler = "edm"
    c.sample.num_steps = 18
    c.sample.num_samples = 64
    if variant == "smoke":
        c.data.name = "image_folder"
        c.data.image_size = 32
        c.data.global_batch_size = 8
        c.model.preset = "TINY"
        c.model.kwargs = {"num_classes": None}
        c.optim.warmup_steps = 2
        c.ema.half_life_images = 100
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
        c.sample.num_steps = 3
        c.sample.num_samples = 4
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of configs/cifar10_edm.py; allowed: smoke.")
    return c
