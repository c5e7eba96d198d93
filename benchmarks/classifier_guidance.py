"""Classifier guidance on the digits: an unconditional model steered by a noisy classifier.

1. Trains (or reads) an unconditional digits model: configs/default.py with
   ``model.kwargs.num_classes=0`` (no labels, no guidance dropout).
2. Trains (or reads) a noisy classifier through the config engine:
   configs/digits_classifier.py (``models.NoisyClassifier``, the U-Net trunk of the DIGITS
   preset with a pooling head, on noised training digits; ``config.task="classifier"``) in
   ``--classifier_workdir``, and checks that it read the noise of the model's schedule.
3. Samples class-balanced digits with ``jaxdiff.classifier_guidance`` at several scales and
   reports the accuracy of an independent classifier (logistic regression on the real
   training digits' pixels, the one of benchmarks/digits_quality.py) and the pixel Frechet
   distance to the test digits next to the train-vs-test floor.

    python benchmarks/classifier_guidance.py                    # ~8 min on 2 cores
    python benchmarks/classifier_guidance.py --skip_train --workdir workdirs/digits_uncond \
        --classifier_workdir workdirs/digits_classifier
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)


def train_unconditional(workdir: str) -> float:
    from absl import logging

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import default as default_config

    from jaxdiff.experiment import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    config = default_config.get_config()
    config.model.kwargs.num_classes = 0
    config.train.cond_drop_prob = 0.0
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    return time.perf_counter() - start


def train_classifier(workdir: str, steps: int) -> float:
    """Train (or resume, or just read) configs/digits_classifier.py in ``workdir`` up to
    ``steps`` steps; returns the seconds it took."""
    from absl import logging

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import digits_classifier

    from jaxdiff.experiment import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    config = digits_classifier.get_config()
    config.train.num_steps = steps
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/digits_uncond")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--classifier_workdir", default="workdirs/digits_classifier")
    p.add_argument("--classifier_steps", type=int, default=3000, help="trained up to this")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--num_steps", type=int, default=50)
    p.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    p.add_argument("--min_t", type=float, default=0.0, help="no guidance below this timestep")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from digits_quality import real_digits
    from sklearn.linear_model import LogisticRegression

    import jaxdiff
    from jaxdiff import training
    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.experiment import load_workdir
    from jaxdiff.experiment.classifier_run import load_classifier_workdir, make_accuracy_fn
    from jaxdiff.experiment.per_sample_rng import per_sample_keys, per_sample_noise

    if not args.skip_train:
        print(
            f"unconditional model trained (or resumed) in {train_unconditional(args.workdir):.0f} s"
        )
    gen = load_workdir(args.workdir)
    if gen.num_classes:
        raise SystemExit(f"{args.workdir} holds a class-conditional model; need num_classes=0.")
    secs = train_classifier(args.classifier_workdir, args.classifier_steps)
    clf, clf_params, clf_schedule = load_classifier_workdir(args.classifier_workdir)
    print(f"noisy classifier in {args.classifier_workdir} ({secs:.0f} s to train or read)")
    if not np.array_equal(clf_schedule.alphas_cumprod, gen.schedule.alphas_cumprod):
        raise SystemExit(
            f"{args.classifier_workdir} was trained on another noise schedule than "
            f"{args.workdir}; give both runs the same config.diffusion."
        )

    xtr, ytr, xte, yte = real_digits()
    accuracy = make_accuracy_fn(
        clf, gen.schedule, xte, yte, timesteps=(0, 250, 500, 750), key=jax.random.key(0)
    )(clf_params)
    print("classifier accuracy on the noised test digits: " + ", ".join(
        f"t={t}: {a:.1%}" for t, a in accuracy.items()
    ))  # fmt: skip
    judge = LogisticRegression(max_iter=5000).fit(pixel_features(xtr), ytr)
    n = len(xte)
    rng = np.random.default_rng(0)
    floor = float(np.mean([
        frechet_distance(pixel_features(xtr[rng.choice(len(xtr), n, replace=False)]),
                         pixel_features(xte)) for _ in range(20)
    ]))  # fmt: skip
    labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
    model = lambda x, t: gen.model.apply({"params": gen.params}, x, t)  # noqa: E731
    clf_log_prob = training.classifier_log_prob(clf.apply, clf_params)

    def log_prob(x, t, labels):  # optionally switched off at low noise
        return clf_log_prob(x, t, labels) * (t >= args.min_t)

    guided = jaxdiff.classifier_guidance(model, log_prob, schedule=gen.schedule)

    @jax.jit
    def draw(noise, keys, scale):
        return jaxdiff.sample(
            guided, noise, schedule=gen.schedule, sampler=args.sampler,
            num_steps=args.num_steps, cond={"labels": labels, "gradient_scale": scale},
            key=keys,
        )  # fmt: skip

    keys = per_sample_keys(1, 0, n)
    noise = per_sample_noise(keys, (8, 8, 1))
    print(f"\n{args.sampler} x {args.num_steps} steps, N = {n} class-balanced samples")
    print("| classifier scale | class accuracy | pixel FD | FD / floor |")
    print("| --- | --- | --- | --- |")
    for scale in [float(v) for v in args.scales.split(",")]:
        images = np.clip(np.asarray(draw(noise, keys, jnp.float32(scale))), -1, 1)
        acc = float(np.mean(judge.predict(pixel_features(images)) == np.asarray(labels)))
        fd = frechet_distance(pixel_features(images), pixel_features(xte))
        print(f"| {scale} | {acc:.1%} | {fd:.3f} | {fd / floor:.2f} |", flush=True)
    print(f"floor (train vs test digits): {floor:.3f}; scale 0 = the unconditional model")


if __name__ == "__main__":
    main()
