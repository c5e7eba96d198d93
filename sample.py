"""Sample from a trained workdir (EMA parameters) or a diffusers-format U-Net.

  python sample.py --workdir=workdirs/default --sampler=dpm_solver --num_steps=20
  python sample.py --workdir=workdirs/default --labels=3,3,7 --guidance_scale=2 --seed=1
  python sample.py --diffusers_dir=path/to/pipeline --sampler=ddim --num_steps=50
  python sample.py --workdir=workdirs/text2img --prompt "a 3 to the left of a seven" \
      --prompt "a small 5 in the top right" --guidance_scale 3

Writes <out>/samples.png (a grid) and <out>/samples.npz (images in [-1, 1], labels or
prompts, seed).
Image i depends only on (seed, i): the same seed gives the same images at any batch size.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("workdir", None, "Training workdir to sample from (latest checkpoint).")
flags.DEFINE_string("diffusers_dir", None, "Or: a diffusers-format pipeline / unet folder.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("sampler", "ddim", "Sampler name (see jaxdiff.samplers.available()).")
flags.DEFINE_integer("num_steps", 20, "Number of sampling steps.")
flags.DEFINE_float("guidance_scale", 1.0, "Classifier-free guidance scale (1: none).")
flags.DEFINE_list("labels", None, "Class labels (cycled); default 0, 1, 2, ... cycling.")
flags.DEFINE_multi_string(
    "prompt", [], 'Text prompt of a text-conditioned model (repeatable, cycled; "": unconditional).'
)
flags.DEFINE_integer("num_samples", 64, "Number of images.")
flags.DEFINE_integer("batch_size", 64, "Images per sampling call.")
flags.DEFINE_integer("seed", 0, "Seed; image i depends only on (seed, i).")
flags.DEFINE_multi_string("option", [], "Sampler option name=value (repeatable), e.g. eta=0.5.")
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/generated).")


def _parse_option(text):
    import json

    name, sep, value = text.partition("=")
    if not sep:
        raise app.UsageError(f"--option must look like name=value; got {text!r}.")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if (f.workdir is None) == (f.diffusers_dir is None):
        raise app.UsageError("Give exactly one of --workdir or --diffusers_dir.")
    from jaxdiff.experiment import images, load_diffusers_dir, load_workdir

    try:  # bad input (flags, workdir, checkpoint): one line, no traceback
        gen = (
            load_workdir(f.workdir, step=f.step)
            if f.workdir
            else load_diffusers_dir(f.diffusers_dir)
        )
        samples, labels = gen.sample(
            num_samples=f.num_samples,
            sampler=f.sampler,
            num_steps=f.num_steps,
            guidance_scale=f.guidance_scale,
            labels=None if f.labels is None else [int(v) for v in f.labels],
            prompts=f.prompt or None,
            seed=f.seed,
            batch_size=f.batch_size,
            options=dict(_parse_option(o) for o in f.option),
        )
    except ValueError as e:
        sys.exit(f"sample.py: error: {e}")
    out = f.out or os.path.join(f.workdir or f.diffusers_dir, "generated")
    images.write_samples(out, samples, labels=labels, seed=f.seed, num_classes=gen.num_classes)
    print(f"Wrote {len(samples)} samples to {out}/samples.png and samples.npz.")


if __name__ == "__main__":
    app.run(main)
