"""A noisy classifier of the 8x8 digits for classifier guidance: the DIGITS U-Net's down path
and middle (16, 32, 64 channels, attention at 4x4, dropout 0.1) with a pooling head, trained on
digits noised at uniformly drawn timesteps of the linear 1000-step schedule of
configs/default.py (the noise of the model it guides: keep config.diffusion equal to that
model's). Batch 128, AdamW at a constant 1e-3, 3000 steps: the recipe of
benchmarks/classifier_guidance.py. TensorBoard shows the held-out accuracy at t = 0, 250, 500
and 750.

Needs no network. Launch:
  python train.py --config=configs/digits_classifier.py --workdir=workdirs/digits_classifier
Then guide an unconditional digits model with it:
  python sample.py --workdir=workdirs/digits_uncond \
      --classifier_workdir=workdirs/digits_classifier --classifier_scale=2 --sampler=ddpm \
      --num_steps=100 --labels=3,7
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/digits_classifier.py:smoke --workdir=/tmp/clf_smoke
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.task = "classifier"
    c.data.name = "digits"
    c.data.global_batch_size = 128
    c.classifier.kwargs = dict(
        channels=(16, 32, 64), num_res_blocks=1, attention_levels=(1,), head_dim=16,
        norm_groups=8, dropout=0.1,
    )  # fmt: skip
    c.classifier.eval_timesteps = [0, 250, 500, 750]
    c.diffusion.beta_schedule = "linear"
    c.diffusion.num_train_timesteps = 1000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.999
    c.train.num_steps = 3000
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.sample_every = 500  # the held-out accuracy
    if variant == "smoke":
        c.classifier.kwargs = dict(
            channels=(8, 8), num_res_blocks=1, attention_levels=(), norm_groups=4,
            mid_attention=False,
        )  # fmt: skip
        c.classifier.eval_images = 16
        c.data.global_batch_size = 16
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
    elif variant:
        raise ValueError(
            f"Unknown variant {variant!r} of configs/digits_classifier.py; allowed: smoke."
        )
    return c
