"""The embedded default: class-conditional diffusion on scikit-learn's 8x8 digits.

Needs no network (the digits ship with scikit-learn). Trains in minutes on a 2-core CPU;
label dropout (10%) makes classifier-free guidance available at sampling time.

Launch:
  python train.py --config=configs/default.py --workdir=workdirs/default
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/default.py:smoke --workdir=/tmp/smoke
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "digits"
    c.data.global_batch_size = 64
    c.model.preset = "DIGITS"
    c.diffusion.beta_schedule = "linear"
    c.diffusion.prediction_type = "epsilon"
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 200
    c.optim.decay = "cosine"
    c.optim.final_lr_fraction = 0.05
    c.ema.decay = 0.999
    c.train.num_steps = 3000
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.sample_every = 1000
    c.train.cond_drop_prob = 0.1
    c.sample.sampler = "ddim"
    c.sample.num_steps = 20
    c.sample.num_samples = 100
    c.sample.guidance_scale = 1.0
    c.sample.options = {"clip_sample": True}
    if variant == "smoke":
        c.model.preset = "TINY"
        c.data.global_batch_size = 16
        c.train.num_steps = 6
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 6
        c.train.progress = False
        c.sample.num_steps = 3
        c.sample.num_samples = 10
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of configs/default.py; allowed: smoke.")
    return c
