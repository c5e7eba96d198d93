"""Super-resolution 8x8 -> 32x32 of the digit scenes and the two-stage cascade, vs bicubic.

Trains (or reads) the super-resolution stage and the 8x8 base model of configs/scenes_sr.py,
then:

1. upsamples the 8x8 views (4x4 average pooling) of the ``test`` scenes with the stage at
   augmentation levels 0 and the run's sample level, and with bicubic and nearest
   interpolation, and reports the PSNR to the originals, the pixel Frechet distance to the
   real test scenes over the floor (train vs test scenes), and the layout accuracy of each
   upsampled scene against its own caption (`jaxdiff.evaluation.layout`: are the digits
   recognisable again?);
2. runs the cascade: the base model's 8x8 samples upsampled by the stage (and by bicubic),
   with the same FD to the real test scenes.

  python benchmarks/super_resolution.py                     # train both if needed
  python benchmarks/super_resolution.py --skip_train --limit 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sr_workdir", default="workdirs/scenes_sr")
    p.add_argument("--base_workdir", default="workdirs/scenes_base8")
    p.add_argument("--skip_train", action="store_true", help="only evaluate the workdirs")
    p.add_argument("--smoke", action="store_true", help="the configs' smoke variants (tests)")
    p.add_argument("--num_steps", type=int, default=None, help="stage steps (default: run's)")
    p.add_argument("--limit", type=int, default=None, help="test scenes (default all 1000)")
    p.add_argument("--floor_draws", type=int, default=3)
    args = p.parse_args(argv)

    from jaxdiff import runtime

    runtime.configure()
    import jax.numpy as jnp
    import scenes_sr
    from clip_guidance import train
    from sklearn.datasets import load_digits
    from text2img_quality import floor, read_split

    from jaxdiff import data
    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.evaluation import layout as scoring
    from jaxdiff.experiment import load_workdir
    from jaxdiff.experiment.super_resolution_run import (
        bicubic_upsample,
        load_super_resolution_workdir,
        psnr,
    )
    from jaxdiff.models.super_resolution import downsample, upsample

    smoke = "smoke" if args.smoke else ""
    if not args.skip_train:
        train(scenes_sr.get_config(smoke), args.sr_workdir, "super-resolution stage")
        train(scenes_sr.get_config("base_smoke" if smoke else "base"), args.base_workdir,
              "8x8 base model")  # fmt: skip
    stage = load_super_resolution_workdir(args.sr_workdir)
    base = load_workdir(args.base_workdir)
    builder_kwargs = scenes_sr.get_config(smoke).data.builder_kwargs.to_dict()
    builder = data.get_builder("digit_scenes", **builder_kwargs)
    test = read_split(builder, "test", args.limit)
    train_scenes = read_split(builder, "train", 5000)["image"]
    real = test["image"]
    low = np.asarray(downsample(jnp.asarray(real), stage.factor))
    fd_floor, _ = floor(train_scenes, real, args.floor_draws)
    real_features = pixel_features(real)

    digits = load_digits()
    pixels = digits.images.astype(np.float32) / 8.0 - 1.0
    classify = scoring.train_digit_classifier(pixels[:1500], digits.target[:1500])
    empty_ink = 0.2 * scoring.median_digit_ink(pixels[:1500])

    def row(images):
        ok = scoring.score_layouts(images, test["digits"], test["boxes"], classify,
                                   empty_ink=empty_ink)  # fmt: skip
        fd = frechet_distance(pixel_features(images), real_features) / fd_floor
        return float(np.mean(psnr(real, images))), fd, float(np.mean(ok))

    t0 = time.perf_counter()
    rows = {
        "nearest": row(np.asarray(upsample(jnp.asarray(low), stage.factor))),
        "bicubic": row(bicubic_upsample(low, stage.factor)),
    }
    for level in sorted({0, stage.sample_level}):
        up = stage.upsample(low, level=level, num_steps=args.num_steps, seed=1, batch_size=250)
        rows[f"this stage, level {level}"] = row(up)
    rows["real scenes"] = (float("nan"), float("nan"), row(real)[2])
    run = stage.run_sampler
    steps = args.num_steps or run["num_steps"]
    print(f"\n8x8 -> 32x32 of {len(real)} test scenes (stage: {run['sampler']} x{steps}):\n")
    print("| upsampling | PSNR (dB) | pixel FD / floor | layout accuracy |")
    print("| --- | --- | --- | --- |")
    for name, (db, fd, acc) in rows.items():
        print(f"| {name} | {db:.2f} | {fd:.2f} | {acc:.1%} |")

    n = len(real)
    base_run = base.run_sampler  # what sample.py --workdir=<base> runs by default
    base_samples, _ = base.sample(num_samples=n, sampler=base_run["sampler"], num_steps=20,
                                  options=base_run["options"], seed=2, batch_size=250,
                                  progress=False)  # fmt: skip
    cascade = stage.upsample(base_samples, num_steps=args.num_steps, seed=3, batch_size=250)
    fd_cascade = frechet_distance(pixel_features(cascade), real_features) / fd_floor
    fd_bicubic = (
        frechet_distance(
            pixel_features(bicubic_upsample(base_samples, stage.factor)), real_features
        )
        / fd_floor
    )
    print(f"\nCascade ({n} base samples, {base_run['sampler']} x20 {base_run['options']} "
          f"at 8x8, then the stage at level "
          f"{stage.sample_level}): pixel FD / floor {fd_cascade:.2f}; base + bicubic "
          f"{fd_bicubic:.2f}. FD floor {fd_floor:.1f}. Took {time.perf_counter() - t0:.0f} s "
          f"(load average {os.getloadavg()[0]:.1f}).")  # fmt: skip


if __name__ == "__main__":
    main()
