"""CLIP guidance of an unconditional digit-scenes model: prompt accuracy vs CLIP scale.

Trains (or reads) the unconditional scene model (configs/text2img.py:uncond, the U-Net and
recipe of the text-to-image run without captions) and the noise-aware CLIP
(configs/scenes_clip.py), then samples the unconditional model for the caption of every
example of the ``test`` split (seen digit combinations) and the ``heldout`` split (two-digit
combinations the CLIP never saw), one image per caption, guided by the CLIP at each scale
(scale 0 is the unguided model: the same noise, no guidance), and scores every image
against its caption's layout (`jaxdiff.evaluation.layout`, as benchmarks/text2img_quality.py
does). Also prints the CLIP's held-out retrieval accuracy on real scenes and the pixel
Frechet distance of the test-prompt samples to the real test scenes, over the floor (train
vs test scenes).

  python benchmarks/clip_guidance.py                        # train both if needed
  python benchmarks/clip_guidance.py --skip_train --scales 0,1,3,10 --limit 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def train(config, workdir: str, name: str) -> None:
    """Train (or resume) a config into a workdir and print its wall time."""
    from absl import logging

    from jaxdiff.experiment import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    t0 = time.perf_counter()
    train_and_evaluate(config, workdir)
    print(f"{name}: trained (or resumed) in {time.perf_counter() - t0:.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uncond_workdir", default="workdirs/scenes_uncond")
    p.add_argument("--clip_workdir", default="workdirs/scenes_clip")
    p.add_argument("--skip_train", action="store_true", help="only evaluate the workdirs")
    p.add_argument("--smoke", action="store_true", help="the configs' smoke variants (tests)")
    p.add_argument("--scales", default="0,1,3,10", help="CLIP guidance scales")
    p.add_argument("--x0_based", action="store_true", help="score the model's x_0 prediction")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--num_steps", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="prompts per split (default all)")
    p.add_argument("--floor_draws", type=int, default=3)
    args = p.parse_args(argv)

    from jaxdiff import runtime

    runtime.configure()
    import scenes_clip
    import text2img
    from sklearn.datasets import load_digits
    from text2img_quality import accuracy_rows, floor, read_split

    from jaxdiff import data
    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.evaluation import layout as scoring
    from jaxdiff.experiment import load_workdir
    from jaxdiff.experiment.clip_run import load_clip_workdir, make_accuracy_fn
    from jaxdiff.experiment.clip_sampling import ClipGuidedGenerator
    from jaxdiff.training.clip_objective import caption_groups

    smoke = ",smoke" if args.smoke else ""
    if not args.skip_train:
        train(text2img.get_config("uncond" + smoke), args.uncond_workdir, "scene model")
        train(scenes_clip.get_config(smoke.lstrip(",")), args.clip_workdir, "CLIP")
    clip, clip_params, clip_schedule, tokenizer = load_clip_workdir(args.clip_workdir)
    gen = ClipGuidedGenerator(load_workdir(args.uncond_workdir), clip, clip_params,
                              clip_schedule, tokenizer, x0_based=args.x0_based)  # fmt: skip
    with open(os.path.join(args.uncond_workdir, "config.json")) as f:
        run_config = json.load(f)
    options = dict(run_config["sample"].get("options", {}))
    builder = data.get_builder("digit_scenes", **run_config["data"].get("builder_kwargs", {}))
    splits = {s: read_split(builder, s, args.limit) for s in ("test", "heldout")}
    train_scenes = read_split(builder, "train", 5000)["image"]

    import jax

    for name, split in splits.items():
        acc = make_accuracy_fn(
            clip, clip_schedule, split["image"], tokenizer(list(split["caption"])),
            caption_groups(split["caption"]), timesteps=[0, 500], key=jax.random.key(0),
        )(clip_params)  # fmt: skip
        print(f"CLIP retrieval accuracy on real {name} scenes among {len(split['image'])} "
              f"captions: t=0 {acc[0]:.1%}, t=500 {acc[500]:.1%}")  # fmt: skip

    digits = load_digits()
    real = digits.images.astype(np.float32) / 8.0 - 1.0
    classify = scoring.train_digit_classifier(real[:1500], digits.target[:1500])
    empty_ink = 0.2 * scoring.median_digit_ink(real[:1500])

    def score(images_, split):
        return scoring.score_layouts(
            images_, split["digits"], split["boxes"], classify, empty_ink=empty_ink
        )

    table = {"real scenes": {}}
    for name, split in splits.items():
        table["real scenes"].update(accuracy_rows(name, score(split["image"], split), split))
    fd_floor, _ = floor(train_scenes, splits["test"]["image"], args.floor_draws)
    fds, t0 = {}, time.perf_counter()
    print(f"sampler {args.sampler} x{args.num_steps}, options {options}, "
          f"{'x0-based' if args.x0_based else 'noisy'} CLIP guidance")  # fmt: skip
    for scale in [float(s) for s in args.scales.split(",")]:
        row = table.setdefault(f"CLIP scale {scale:g}", {})
        for name, split in splits.items():
            samples, _ = gen.sample(
                num_samples=len(split["caption"]), prompts=list(split["caption"]),
                sampler=args.sampler, num_steps=args.num_steps, guidance_scale=scale,
                seed=1, batch_size=250, options=options, progress=False,
            )  # fmt: skip
            row.update(accuracy_rows(name, score(samples, split), split))
            if name == "test":
                fds[scale] = frechet_distance(
                    pixel_features(samples), pixel_features(split["image"])
                )
        print(f"  scale {scale:g} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    columns = ["seen one-digit", "seen two-digit", "seen all", "held-out two-digit"]
    print(f"\n| images | {' | '.join(columns)} | FD / floor |")
    print("|" + " --- |" * (len(columns) + 2))
    for label, row in table.items():
        scale = None if label == "real scenes" else float(label.split()[-1])
        fd = f"{fds[scale] / fd_floor:.2f}" if scale in fds else "-"
        print(f"| {label} | {' | '.join(f'{row[c]:.1%}' for c in columns)} | {fd} |")
    print(
        f"\nPrompts: {len(splits['test']['caption'])} test, "
        f"{len(splits['heldout']['caption'])} held-out; FD floor {fd_floor:.1f}; sampling took "
        f"{time.perf_counter() - t0:.0f} s (load average {os.getloadavg()[0]:.1f})."
    )


if __name__ == "__main__":
    main()
