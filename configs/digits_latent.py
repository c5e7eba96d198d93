"""Latent diffusion on the digits at 32x32: a class-conditional U-Net on the 8x8x2 latents
of configs/digits_vae.py's autoencoder (train that first).

Needs no network. Launch (after the VAE run):
  python train.py --config=configs/digits_vae.py --workdir=workdirs/digits_vae
  python train.py --config=configs/digits_latent.py --workdir=workdirs/digits_latent \
      --config.latent.vae=workdirs/digits_vae
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/digits_latent.py:smoke --workdir=/tmp/latent_smoke \
      --config.latent.vae=/tmp/vae_smoke
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.global_batch_size = 64
    c.latent.vae = "workdirs/digits_vae"
    c.latent.cache = True
    c.latent.estimate_scaling_factor = True
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
    c.sample.options = {"clip_sample": False}
    if variant == "smoke":
        c.model.preset = "TINY"
        c.model.kwargs = {"channels": (16,), "attention_levels": ()}  # one level: compiles fast
        c.data.global_batch_size = 8
        c.latent.estimate_examples = 16
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
        c.sample.num_steps = 3
        c.sample.num_samples = 10
    elif variant:
        raise ValueError(
            f"Unknown variant {variant!r} of configs/digits_latent.py; allowed: smoke."
        )
    return c
