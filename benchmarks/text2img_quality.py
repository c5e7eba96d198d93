"""Compositional accuracy and Frechet distance of the text-to-image digit-scenes model.

Trains configs/text2img.py (or reads an existing workdir), then prompts the model with the
caption of every example of the ``test`` split (seen digit combinations, every template) and
of the ``heldout`` split (two-digit combinations never seen in training), one image per
caption, at each guidance scale, and scores every image against the layout of its caption
(`jaxdiff.evaluation.layout`): correct when each requested digit is recognised in its box by
a digit classifier trained on real digits and no digit is drawn elsewhere. Reports prompt
accuracy for seen one-digit, seen two-digit and held-out two-digit prompts, the same score of
the real scenes (the classifier's ceiling), and at guidance 1 the pixel Frechet distance of
the test-prompt images to the real test scenes next to the floor (train scenes vs the same
test scenes). Writes a sample grid (the config's sample prompts) to --grid.

  python benchmarks/text2img_quality.py --workdir=workdirs/text2img           # train if needed
  python benchmarks/text2img_quality.py --workdir=workdirs/text2img --skip_train
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def train(workdir: str, variant: str) -> None:
    """Train (or resume) configs/text2img.py and print wall / CPU time and the load."""
    import text2img
    from absl import logging

    from jaxdiff.experiment import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), _cpu_seconds()
    train_and_evaluate(text2img.get_config(variant), workdir)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    print(
        f"training (or resuming): wall {wall:.0f} s, CPU {cpu:.0f} s (CPU/wall {cpu / wall:.2f}); "
        f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )


def read_split(builder, split: str, limit: int | None) -> dict[str, np.ndarray]:
    """Images in [-1, 1], captions, digits, boxes and templates of a split."""
    source = builder.as_data_source(split)
    n = len(source) if limit is None else min(limit, len(source))
    records = source.__getitems__(list(range(n)))
    pixel_max = 16.0
    return {
        "image": np.stack([r["image"] for r in records]).astype(np.float32) * (2 / pixel_max) - 1,
        "caption": np.array([r["caption"].decode() for r in records]),
        "digits": np.stack([r["digits"] for r in records]),
        "boxes": np.stack([r["boxes"] for r in records]),
        "template": np.array([r["template"] for r in records]),
    }


def accuracy_rows(name: str, ok: np.ndarray, split: dict) -> dict[str, float]:
    """Accuracy of one split by kind of prompt."""
    two = split["template"] > 0
    if name == "heldout":
        return {"held-out two-digit": float(ok[two].mean())}
    return {"seen one-digit": float(ok[~two].mean()), "seen two-digit": float(ok[two].mean()),
            "seen all": float(ok.mean())}  # fmt: skip


def floor(train_images, test_images, draws: int, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the FD between len(test) random train scenes and the test scenes."""
    from jaxdiff.evaluation import frechet_distance, pixel_features

    rng = np.random.default_rng(seed)
    test = pixel_features(test_images)
    values = [
        frechet_distance(
            pixel_features(train_images[rng.choice(len(train_images), len(test_images), False)]),
            test,
        )
        for _ in range(draws)
    ]
    return float(np.mean(values)), float(np.std(values))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/text2img")
    p.add_argument("--skip_train", action="store_true", help="only evaluate the workdir")
    p.add_argument("--variant", default="", help="config variant (smoke: the test recipe)")
    p.add_argument("--scales", default="1,3,5", help="guidance scales")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--num_steps", type=int, default=20)
    p.add_argument("--options", default=None, help="sampler options as JSON (default: the run's)")
    p.add_argument("--limit", type=int, default=None, help="prompts per split (default all)")
    p.add_argument("--floor_draws", type=int, default=5)
    p.add_argument("--grid", default=os.path.join(ROOT, "docs", "text2img_samples.png"))
    args = p.parse_args(argv)

    from jaxdiff import runtime

    runtime.configure()  # what train.py / sample.py do: compile cache, XLA CPU flags
    from sklearn.datasets import load_digits

    from jaxdiff import data
    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.evaluation import layout as scoring
    from jaxdiff.experiment import images, load_workdir

    if not args.skip_train:
        train(args.workdir, args.variant)
    gen = load_workdir(args.workdir)
    with open(os.path.join(args.workdir, "config.json")) as f:
        run_config = json.load(f)
    builder_kwargs = run_config["data"].get("builder_kwargs", {})
    options = dict(run_config["sample"].get("options", {}))  # the run's sampler options
    if args.options is not None:
        options = json.loads(args.options)
    print(f"sampler {args.sampler} x{args.num_steps}, options {options}")
    builder = data.get_builder("digit_scenes", **builder_kwargs)
    splits = {s: read_split(builder, s, args.limit) for s in ("test", "heldout")}
    train_scenes = read_split(builder, "train", 5000)["image"]

    digits = load_digits()
    real = digits.images.astype(np.float32) / 8.0 - 1.0
    classify = scoring.train_digit_classifier(real[:1500], digits.target[:1500])
    digit_accuracy = float(np.mean(classify(real[1500:]) == digits.target[1500:]))
    empty_ink = 0.2 * scoring.median_digit_ink(real[:1500])
    print(f"digit classifier: {digit_accuracy:.1%} on the 297 test digits")

    def score(images_, split):
        return scoring.score_layouts(
            images_, split["digits"], split["boxes"], classify, empty_ink=empty_ink
        )

    table = {"real scenes": {}}
    for name, split in splits.items():
        table["real scenes"].update(accuracy_rows(name, score(split["image"], split), split))
    fd_floor, fd_std = floor(train_scenes, splits["test"]["image"], args.floor_draws)
    fds = {}
    t0 = time.perf_counter()
    for scale in [float(s) for s in args.scales.split(",")]:
        row = table.setdefault(f"guidance {scale:g}", {})
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
    sampling_s = time.perf_counter() - t0

    columns = ["seen one-digit", "seen two-digit", "seen all", "held-out two-digit"]
    print(f"\n| images | {' | '.join(columns)} | pixel FD | FD / floor |")
    print("|" + " --- |" * (len(columns) + 3))
    for label, row in table.items():
        scale = None if label == "real scenes" else float(label.split()[1])
        fd = f"{fds[scale]:.1f} | {fds[scale] / fd_floor:.2f}" if scale in fds else "- | -"
        cells = " | ".join(f"{row[c]:.1%}" for c in columns)
        print(f"| {label} | {cells} | {fd} |")
    print(
        f"\nFD floor (train vs test scenes, {len(splits['test']['image'])} each): "
        f"{fd_floor:.1f} +- {fd_std:.1f} over {args.floor_draws} draws. "
        f"Prompts: {len(splits['test']['caption'])} test, {len(splits['heldout']['caption'])} "
        f"held-out; {args.sampler} x{args.num_steps}; sampling took {sampling_s:.0f} s "
        f"(load average {os.getloadavg()[0]:.1f})."
    )
    prompts = list(gen.default_prompts) * 8
    samples, prompts = gen.sample(num_samples=len(prompts), prompts=prompts, sampler=args.sampler,
                                  num_steps=args.num_steps, guidance_scale=3.0, seed=0,
                                  options=options, progress=False)  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.grid)), exist_ok=True)
    images.save_sample_grid(samples, args.grid, prompts=prompts)
    print(f"sample grid (guidance 3): {args.grid}")


if __name__ == "__main__":
    main()
