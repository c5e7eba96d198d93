"""Sample from a trained workdir (EMA parameters) or a diffusers-format U-Net.

  python sample.py --workdir=workdirs/default --sampler=dpm_solver --num_steps=20
  python sample.py --workdir=workdirs/default --labels=3,3,7 --guidance_scale=2 --seed=1
  python sample.py --diffusers_dir=path/to/pipeline --sampler=ddim --num_steps=50
  python sample.py --workdir=workdirs/digits_uncond \
      --classifier_workdir=workdirs/digits_classifier --classifier_scale=2 --sampler=ddpm
  python sample.py --pipeline_dir=path/to/sd15 --prompt="a red fox" --num_steps=25 --out=out
  python sample.py --workdir=workdirs/text2img --prompt "a 3 to the left of a seven" \
      --prompt "a small 5 in the top right" --guidance_scale 3
  python sample.py --workdir=workdirs/scenes_uncond --clip_workdir=workdirs/scenes_clip \
      --clip_scale=3 --prompt "a 3 to the left of a seven"
  python sample.py --workdir=workdirs/scenes_base8 --sr_workdir=workdirs/scenes_sr  # cascade

Writes <out>/samples.png (a grid) and <out>/samples.npz (images in [-1, 1], labels or
prompts, seed).
Image i depends only on (seed, i): the same seed gives the same images at any batch size.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_bool("compile_cache", True, "Persistent XLA compilation cache ($JAXDIFF_CACHE_DIR).")
flags.DEFINE_bool("cpu_flags", True, "Add jaxdiff's verified XLA CPU flags (jaxdiff.runtime).")
flags.DEFINE_string("workdir", None, "Training workdir to sample from (latest checkpoint).")
flags.DEFINE_string("diffusers_dir", None, "Or: a diffusers-format pipeline / unet folder.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("sampler", "ddim", "Sampler name (see jaxdiff.samplers.available()).")
flags.DEFINE_integer("num_steps", 20, "Number of sampling steps.")
flags.DEFINE_float("guidance_scale", 1.0, "Classifier-free guidance scale (1: none).")
flags.DEFINE_list("labels", None, "Class labels (cycled); default 0, 1, 2, ... cycling.")
flags.DEFINE_string(
    "classifier_workdir", None, "Guide an unconditional --workdir by this classifier run."
)
flags.DEFINE_float("classifier_scale", 1.0, "Classifier guidance scale (0: unguided).")
flags.DEFINE_string(
    "clip_workdir", None, "Guide an unconditional --workdir towards --prompt by this CLIP run."
)
flags.DEFINE_float("clip_scale", 1.0, "CLIP guidance scale (0: unguided).")
flags.DEFINE_string(
    "sr_workdir", None, "Cascade: upsample --workdir's samples with this super-resolution run."
)
flags.DEFINE_integer("sr_level", None, "Augmentation level of the cascade's input (run's default).")
flags.DEFINE_integer("sr_steps", None, "Sampling steps of the super-resolution stage (run's).")
flags.DEFINE_bool("clip_x0", False, "CLIP guidance scores the model's x_0 prediction, not x_t.")
flags.DEFINE_multi_string(
    "prompt",
    [],
    "Text prompt (repeatable, cycled) of a text-conditioned workdir or of --pipeline_dir; "
    '"": unconditional.',
)
flags.DEFINE_integer("num_samples", 64, "Number of images.")
flags.DEFINE_integer("batch_size", 64, "Images per sampling call.")
flags.DEFINE_integer("seed", 0, "Seed; image i depends only on (seed, i).")
flags.DEFINE_multi_string(
    "option",
    [],
    "Sampler option name=value (repeatable), e.g. eta=0.5; over the run's config.sample.options "
    "when --sampler is its config.sample.sampler.",
)
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/generated).")
# Stable Diffusion pipelines (jaxdiff.pipelines.cli); --prompt, --num_steps, --seed,
# --batch_size, --sampler, --option, --guidance_scale and --out apply too.
flags.DEFINE_string("pipeline_dir", None, "Or: a diffusers Stable Diffusion / SDXL pipeline.")
flags.DEFINE_string("negative_prompt", None, "Negative prompt for --pipeline_dir.")
flags.DEFINE_string("image", None, "Input image: image-to-image (or inpainting with --mask).")
flags.DEFINE_float("strength", None, "Image-to-image / inpainting strength in (0, 1].")
flags.DEFINE_string("mask", None, "Inpainting mask image (white = repaint).")


def _parse_option(text):
    import json

    name, sep, value = text.partition("=")
    if not sep:
        raise app.UsageError(f"--option must look like name=value; got {text!r}.")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _options(gen, f):
    """--option values over the run's own sampler options (config.sample.options, used when
    --sampler is the run's config.sample.sampler)."""
    run = getattr(gen, "run_sampler", None)
    base = dict(run["options"]) if run and run["sampler"] == f.sampler else {}
    return {**base, **dict(_parse_option(o) for o in f.option)}


def _run_pipeline(f):
    from jaxdiff.pipelines import cli

    out = f.out or os.path.join(f.pipeline_dir, "generated")
    images = cli.generate_images(
        f.pipeline_dir, f.prompt, out=out, negative_prompt=f.negative_prompt, image=f.image,
        mask=f.mask, strength=f.strength, num_steps=f.num_steps, batch_size=f.batch_size,
        seed=f.seed, guidance_scale=f.guidance_scale if f["guidance_scale"].present else None,
        sampler=f.sampler if f["sampler"].present else None,
        sampler_options=dict(_parse_option(o) for o in f.option),
    )  # fmt: skip
    print(f"Wrote {len(images)} images to {out}/image_*.png and images.npz.")


def _guided(gen, f):
    """The Generator of --workdir guided by the classifier of --classifier_workdir."""
    from jaxdiff.experiment.classifier_run import load_classifier_workdir
    from jaxdiff.experiment.classifier_sampling import ClassifierGuidedGenerator

    if f["guidance_scale"].present:
        raise ValueError(
            "--guidance_scale is classifier-free guidance of a conditional model; with "
            "--classifier_workdir give --classifier_scale."
        )
    return ClassifierGuidedGenerator(gen, *load_classifier_workdir(f.classifier_workdir))


def _clip_guided(gen, f):
    """The Generator of --workdir guided towards --prompt by the CLIP of --clip_workdir."""
    from jaxdiff.experiment.clip_run import load_clip_workdir
    from jaxdiff.experiment.clip_sampling import ClipGuidedGenerator

    if f["guidance_scale"].present or f.classifier_workdir is not None:
        raise ValueError(
            "--clip_workdir guides an unconditional model by its own scale; give --clip_scale "
            "(not --guidance_scale or --classifier_workdir)."
        )
    return ClipGuidedGenerator(gen, *load_clip_workdir(f.clip_workdir), x0_based=f.clip_x0)


def _upsample(samples, f):
    """The cascade's second stage: --workdir's samples upsampled by --sr_workdir."""
    from jaxdiff.experiment.super_resolution_run import load_super_resolution_workdir

    stage = load_super_resolution_workdir(f.sr_workdir)
    print(f"Upsampling {len(samples)} samples x{stage.factor} with {f.sr_workdir}.")
    return stage.upsample(samples, num_steps=f.sr_steps, level=f.sr_level, seed=f.seed,
                          batch_size=f.batch_size, progress=True)  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from jaxdiff import runtime

    runtime.configure(compilation_cache=flags.FLAGS.compile_cache, cpu_flags=flags.FLAGS.cpu_flags)
    if flags.FLAGS.pipeline_dir is not None:
        return _run_pipeline(flags.FLAGS)
    f = flags.FLAGS
    if (f.workdir is None) == (f.diffusers_dir is None):
        raise app.UsageError("Give exactly one of --workdir, --diffusers_dir or --pipeline_dir.")
    from jaxdiff.experiment import images, load_diffusers_dir, load_workdir

    try:  # bad input (flags, workdir, checkpoint): one line, no traceback
        gen = (
            load_workdir(f.workdir, step=f.step)
            if f.workdir
            else load_diffusers_dir(f.diffusers_dir)
        )
        scale = f.guidance_scale
        if f.clip_workdir is not None:
            gen, scale = _clip_guided(gen, f), f.clip_scale
        elif f.classifier_workdir is not None:
            gen, scale = _guided(gen, f), f.classifier_scale
        samples, labels = gen.sample(
            num_samples=f.num_samples,
            sampler=f.sampler,
            num_steps=f.num_steps,
            guidance_scale=scale,
            labels=None if f.labels is None else [int(v) for v in f.labels],
            prompts=f.prompt or None,
            seed=f.seed,
            batch_size=f.batch_size,
            options=_options(gen, f),
        )
        if f.sr_workdir is not None:
            samples = _upsample(samples, f)
    except ValueError as e:
        sys.exit(f"sample.py: error: {e}")
    out = f.out or os.path.join(f.workdir or f.diffusers_dir, "generated")
    images.write_samples(out, samples, labels=labels, seed=f.seed, num_classes=gen.num_classes)
    print(f"Wrote {len(samples)} samples to {out}/samples.png and samples.npz.")


if __name__ == "__main__":
    app.run(main)
