"""Quality of the default digits model: pixel Frechet distance and class accuracy.

Trains configs/default.py (or reads an existing workdir), samples with several samplers and
step counts, and reports for each:
  * the pixel-space Frechet distance (64-dim) of N class-balanced samples to the held-out
    digits (the test split, N = its size), next to the floor: the distance between N random
    training digits and the same test digits (mean over several draws);
  * the accuracy of a classifier trained on real digits (logistic regression on the train
    split) on class-conditional samples, i.e. how often a sample is the requested digit.

  python benchmarks/digits_quality.py --workdir=workdirs/default          # train if needed
  python benchmarks/digits_quality.py --workdir=workdirs/default --skip_train
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (sampler, num_steps, guidance_scale, options)
CONFIGS = [
    ("ddim", 10, 1.0, {"clip_sample": True}),
    ("ddim", 20, 1.0, {"clip_sample": True}),
    ("ddim", 50, 1.0, {"clip_sample": True}),
    ("ddim", 20, 2.0, {"clip_sample": True}),
    ("dpm_solver", 10, 1.0, {}),
    ("dpm_solver", 20, 1.0, {}),
    ("unipc", 20, 1.0, {}),
    ("euler", 20, 1.0, {}),
    ("heun", 10, 1.0, {}),
    ("ddpm", 50, 1.0, {"clip_sample": True}),
]
SLOW = [("ddpm", 1000, 1.0, {"clip_sample": True})]


def real_digits():
    """(train images, train labels, test images, test labels) in [-1, 1], NHWC, as the
    digits builder splits them (first 1500 / last 297 of scikit-learn's order)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    return x[:1500], d.target[:1500], x[1500:], d.target[1500:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/default")
    p.add_argument("--skip_train", action="store_true", help="only evaluate the workdir")
    p.add_argument("--floor_draws", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="only the 20-step DDIM row")
    p.add_argument("--include_slow", action="store_true", help="also 1000-step DDPM")
    args = p.parse_args(argv)

    from sklearn.linear_model import LogisticRegression

    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.experiment import load_workdir

    if not args.skip_train:
        from absl import logging

        sys.path.insert(0, os.path.join(ROOT, "configs"))
        import default as default_config

        from jaxdiff.experiment import train_and_evaluate

        logging.set_verbosity(logging.WARNING)
        t0 = time.perf_counter()
        train_and_evaluate(default_config.get_config(), args.workdir)
        print(f"training (or resuming) took {time.perf_counter() - t0:.0f} s")

    xtr, ytr, xte, yte = real_digits()
    n = len(xte)
    clf = LogisticRegression(max_iter=5000).fit(pixel_features(xtr), ytr)
    print(f"classifier accuracy on real test digits: {clf.score(pixel_features(xte), yte):.3f}")
    rng = np.random.default_rng(0)
    floors = [
        frechet_distance(
            pixel_features(xtr[rng.choice(len(xtr), n, replace=False)]), pixel_features(xte)
        )
        for _ in range(args.floor_draws)
    ]
    floor = float(np.mean(floors))
    print(f"floor (train vs test, N={n}): FD {floor:.3f} +- {np.std(floors):.3f}")

    gen = load_workdir(args.workdir)
    labels = np.arange(n) % 10
    rows = []
    configs = CONFIGS + (SLOW if args.include_slow else [])
    if args.quick:
        configs = [c for c in CONFIGS if c[:3] == ("ddim", 20, 1.0)]
    for sampler, steps, scale, options in configs:
        t0 = time.perf_counter()
        images, _ = gen.sample(
            num_samples=n,
            sampler=sampler,
            num_steps=steps,
            guidance_scale=scale,
            labels=labels,
            seed=1,
            batch_size=n,
            options=options,
            progress=False,
        )
        secs = time.perf_counter() - t0
        images = np.clip(images, -1.0, 1.0)
        fd = frechet_distance(pixel_features(images), pixel_features(xte))
        acc = float(np.mean(clf.predict(pixel_features(images)) == labels))
        rows.append((sampler, steps, scale, fd, fd / floor, acc, secs))
        print(
            f"{sampler:>10} steps={steps:<4} w={scale:<3} FD {fd:7.3f} ({fd / floor:4.2f}x "
            f"floor)  accuracy {acc:.3f}  [{secs:.1f} s incl. compile]",
            flush=True,
        )

    print("\n| sampler | steps | guidance | pixel FD | FD / floor | class accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for sampler, steps, scale, fd, ratio, acc, _ in rows:
        print(f"| {sampler} | {steps} | {scale} | {fd:.3f} | {ratio:.2f} | {acc:.1%} |")
    print(f"\nfloor: {floor:.3f} (train vs test digits, N={n}, mean of {args.floor_draws} draws)")
    ok = [r for r in rows if r[1] == 20 and r[3] <= 2 * floor and r[5] >= 0.9]
    print(
        "targets (20 steps: FD <= 2x floor and accuracy >= 90%):",
        "MET by " + ", ".join(f"{r[0]} w={r[2]}" for r in ok) if ok else "NOT MET",
    )


if __name__ == "__main__":
    main()
