"""Text-to-image from scratch on the digit scenes: a cross-attention U-Net and a small text
encoder trained jointly, with caption dropout for classifier-free guidance.

Data: `digit_scenes` (jaxdiff.data.scenes): 32x32x1 scenes of one or two of scikit-learn's
digits, captioned "a small 5 in the top right", "a 3 to the left of a seven", "a four above a
2"; the held-out split has two-digit combinations never seen in training. Nothing is
downloaded.

Pixel space or latent space: PIXEL space. The U-Net runs on 4x4 pixel patches folded into
channels (config.model.patch_size=4: an exact, invertible rearrangement of the pixels, so the
diffusion process and the samplers still see pixels; the network works at 8x8 positions of
16 channels). Measured on the 2-core CPU: the 32x32x1 U-Net without patches cost ~4x more
per step than the patched one, which left too few steps in the 20-minute budget; a VAE
(configs/digits_vae.py's recipe took 13 min on a loaded machine for the digits at 32x32)
would take its own share of the same budget, and these scenes have so little detail (8x8
digits, at most upscaled 2x) that patching loses nothing measurable.

Prediction type: v (v_prediction). With epsilon prediction the same run learned the
captions hardly at all: its held-out loss with the right caption was within 1-4% of the loss
with the empty one at every t (the epsilon loss gives little weight to the high-noise steps
where the layout is decided), and its samples scored 0-5% prompt accuracy. With v the
right caption's loss is 0.66x the empty caption's at t = 500 and 0.30x at t = 800 after
1000 steps (benchmarks/text2img_quality.py, README).

Launch (make train-text2img runs the same):
  python train.py --config=configs/text2img.py --workdir=workdirs/text2img
  python sample.py --workdir=workdirs/text2img --prompt "a 3 to the left of a seven" \
      --prompt "a small 5 in the top right" --guidance_scale 3
  python benchmarks/text2img_quality.py --workdir=workdirs/text2img
The unconditional variant (no captions; the scene model of CLIP guidance, configs/scenes_clip.py):
  python train.py --config=configs/text2img.py:uncond --workdir=workdirs/scenes_uncond
Smoke variant (a few steps, used by the tests):
  python train.py --config=configs/text2img.py:smoke --workdir=/tmp/smoke
  python train.py --config=configs/text2img.py:uncond,smoke --workdir=/tmp/uncond_smoke
"""

from jaxdiff.experiment import base_config

SAMPLE_PROMPTS = [
    "a small 5 in the top right",
    "a large seven in the bottom left",
    "a 3 to the left of a seven",
    "a four above a 1",
    "a 8 to the left of a one",  # a held-out combination
    "a six above a 2",  # a held-out combination
    "",
]


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "digit_scenes"
    c.data.global_batch_size = 64
    c.model.preset = "DIGITS"
    c.model.patch_size = 4
    c.model.kwargs = dict(
        channels=(32, 64, 128),
        num_res_blocks=1,
        attention_levels=(0, 1, 2),
        attention_type="transformer",
        context_dim=64,
        head_dim=32,
        norm_groups=8,
        dropout=0.0,
        num_classes=0,
    )
    c.text.encoder = "small"
    c.text.width = 64
    c.text.num_layers = 2
    c.text.num_heads = 4
    c.text.sample_prompts = SAMPLE_PROMPTS
    c.diffusion.beta_schedule = "linear"
    c.diffusion.prediction_type = "v_prediction"
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
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
    c.sample.num_samples = 7 * 8
    c.sample.guidance_scale = 3.0
    # No x_0 clipping (DDIM clips by default, as diffusers' DDIMScheduler): with
    # v-prediction, DDIM's clipped x_0 and its unclipped epsilon diverge under guidance
    # (scale 3 drew "a 4 to the left of a 1" for "a four above a 1"); unclipped DDIM,
    # dpm_solver and euler agree and follow the prompt.
    c.sample.options = {"clip_sample": False}
    variants = set(variant.split(",")) - {""}
    unknown = sorted(variants - {"uncond", "smoke"})
    if unknown:
        raise ValueError(
            f"Unknown variant {unknown[0]!r} of configs/text2img.py; allowed: uncond, smoke "
            "(or both: uncond,smoke)."
        )
    if "uncond" in variants:  # the same U-Net and recipe without captions (CLIP guidance's)
        c.text.encoder = "none"
        c.text.sample_prompts = []
        c.model.kwargs.context_dim = None
        c.train.cond_drop_prob = 0.0
        c.sample.guidance_scale = 1.0
        c.sample.num_samples = 64
    if "smoke" in variants:
        c.data.builder_kwargs = {"split_sizes": {"train": 256, "test": 32, "heldout": 32}}
        c.model.kwargs.channels = (16,)
        c.model.kwargs.attention_levels = ()
        c.model.kwargs.context_dim = None if "uncond" in variants else 16
        c.model.kwargs.head_dim = 8
        c.text.width = 16
        c.text.num_layers = 1
        c.data.global_batch_size = 8
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.save_every = 2
        c.train.sample_every = 4
        c.train.progress = False
        c.sample.num_steps = 3
        c.sample.num_samples = 7 if "uncond" not in variants else 8
    return c
