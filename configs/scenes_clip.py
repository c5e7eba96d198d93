"""A small noise-aware CLIP of the digit scenes, for CLIP guidance of the unconditional scene
model (configs/text2img.py:uncond): an image tower on 4x4 pixel patches folded into channels
(as the scene model's U-Net) of two levels (64 and 128 channels at 8x8 and 4x4, no
attention) whose 4x4 features are flattened into the 64-d embedding (average pooling would
forget where the digits are, and the captions are about where they are), and the 2-layer,
64-wide text encoder of configs/text2img.py. Images are noised at uniformly drawn timesteps
of the linear 1000-step schedule of configs/text2img.py (the noise of the model it guides:
keep config.diffusion equal to that model's). Batch 128, AdamW at 1e-3 with cosine decay,
2000 steps. TensorBoard shows the held-out retrieval
accuracy (the best-matching caption among 512 held-out captions is the image's own) at
t = 0, 250, 500 and 750.

Needs no network. Launch:
  python train.py --config=configs/scenes_clip.py --workdir=workdirs/scenes_clip
Then guide the unconditional scene model towards prompts:
  python sample.py --workdir=workdirs/scenes_uncond --clip_workdir=workdirs/scenes_clip \\
      --clip_scale=3 --prompt "a 3 to the left of a seven" --prompt "a small 5 in the top right"
  python benchmarks/clip_guidance.py
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/scenes_clip.py:smoke --workdir=/tmp/clip_smoke
"""

from jaxdiff.experiment import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.task = "clip"
    c.data.name = "digit_scenes"
    c.data.global_batch_size = 128
    c.clip.kwargs = dict(
        channels=(64, 128), num_res_blocks=1, attention_levels=(), mid_attention=False,
        norm_groups=8, dropout=0.0, pool="flatten",
    )  # fmt: skip
    c.clip.embed_dim = 64
    c.clip.patch_size = 4
    c.text.encoder = "small"
    c.text.width = 64
    c.text.num_layers = 2
    c.text.num_heads = 4
    c.diffusion.beta_schedule = "linear"
    c.diffusion.num_train_timesteps = 1000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.final_lr_fraction = 0.05
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.999
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.sample_every = 500  # the held-out retrieval accuracy
    if variant == "smoke":
        c.data.builder_kwargs = {"split_sizes": {"train": 256, "test": 32, "heldout": 32}}
        c.clip.kwargs = dict(
            channels=(8, 8), num_res_blocks=1, attention_levels=(), norm_groups=4,
            mid_attention=False, pool="flatten",
        )  # fmt: skip
        c.clip.embed_dim = 16
        c.clip.eval_images = 16
        c.text.width = 16
        c.text.num_layers = 1
        c.data.global_batch_size = 16
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of configs/scenes_clip.py; allowed: smoke.")
    return c
