"""A KL autoencoder (4x downsampling) on the digits, resized to 32x32: the first stage of
configs/digits_latent.py.

Needs no network. Launch:
  python train.py --config=configs/digits_vae.py --workdir=workdirs/digits_vae
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/digits_vae.py:smoke --workdir=/tmp/vae_smoke
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.task = "autoencoder"
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.global_batch_size = 32
    c.autoencoder.kwargs = dict(
        channels=(8, 16, 16), layers_per_block=1, latent_channels=2, norm_groups=4
    )
    c.autoencoder.reconstruction = "l1"
    c.autoencoder.kl_weight = 1e-6
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.final_lr_fraction = 0.05
    c.ema.decay = 0.999
    c.train.num_steps = 1500
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.sample_every = 500
    if variant == "smoke":
        c.autoencoder.kwargs = dict(channels=(8, 8, 8), latent_channels=2, norm_groups=4)
        c.autoencoder.eval_images = 8
        c.data.global_batch_size = 8
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of configs/digits_vae.py; allowed: smoke.")
    return c
