"""Classifier guidance on the digits: an unconditional model steered by a noisy classifier.

1. Trains (or reads) an unconditional digits model: configs/default.py with
   ``model.kwargs.num_classes=0`` (no labels, no guidance dropout).
2. Trains a noisy classifier (``models.NoisyClassifier``, the U-Net trunk of the DIGITS
   preset with a pooling head) on noised training digits with jaxdiff's train step and loop
   (``training.make_classifier_loss_fn``: uniform timesteps, cross-entropy).
3. Samples class-balanced digits with ``jaxdiff.classifier_guidance`` at several scales and
   reports the accuracy of an independent classifier (logistic regression on the real
   training digits' pixels, the one of benchmarks/digits_quality.py) and the pixel Frechet
   distance to the test digits next to the train-vs-test floor.

    python benchmarks/classifier_guidance.py                    # ~8 min on 2 cores
    python benchmarks/classifier_guidance.py --skip_train --workdir workdirs/digits_uncond
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


def train_classifier(steps: int, batch: int, schedule, seed: int = 0):
    """(module, params, seconds): the noisy classifier trained on the 1500 training digits."""
    import jax
    import jax.numpy as jnp
    from digits_quality import real_digits

    from jaxdiff import models, training

    xtr, ytr, _, _ = real_digits()
    clf = models.NoisyClassifier(
        channels=(16, 32, 64), num_res_blocks=1, attention_levels=(1,), head_dim=16,
        norm_groups=8, dropout=0.1, num_outputs=10,
    )  # fmt: skip
    params = clf.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    tx = training.make_optimizer(learning_rate=1e-3, weight_decay=0.0)
    step = jax.jit(training.make_train_step(
        training.make_classifier_loss_fn(clf.apply, schedule=schedule), tx
    ), donate_argnums=0)  # fmt: skip
    state = training.create_train_state(params, tx)

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            idx = rng.choice(len(xtr), batch, replace=False)
            yield {"image": xtr[idx], "label": ytr[idx].astype(np.int32)}

    start = time.perf_counter()
    log = []
    result = training.train_loop(
        step, state, batches(), num_steps=steps, key=jax.random.key(seed + 1),
        log_every=max(steps // 5, 1), callbacks=[lambda s, m, _: log.append((s, m))],
        handle_sigterm=False,
    )  # fmt: skip
    for s, m in log:
        print(f"  classifier step {s}: loss {m['loss']:.3f}, accuracy on noised digits "
              f"{m['accuracy']:.3f}")  # fmt: skip
    return clf, result.state.params, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/digits_uncond")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--classifier_steps", type=int, default=3000)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--num_steps", type=int, default=50)
    p.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    p.add_argument("--min_t", type=float, default=0.0, help="no guidance below this timestep")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from digits_quality import real_digits
    from flax import serialization
    from sklearn.linear_model import LogisticRegression

    import jaxdiff
    from jaxdiff import training
    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.experiment import load_workdir
    from jaxdiff.experiment.per_sample_rng import per_sample_keys, per_sample_noise

    if not args.skip_train:
        print(
            f"unconditional model trained (or resumed) in {train_unconditional(args.workdir):.0f} s"
        )
    gen = load_workdir(args.workdir)
    if gen.num_classes:
        raise SystemExit(f"{args.workdir} holds a class-conditional model; need num_classes=0.")
    path = os.path.join(args.workdir, f"noisy_classifier_{args.classifier_steps}.msgpack")
    clf, clf_params, secs = train_classifier(
        args.classifier_steps if not os.path.exists(path) else 0, 128, gen.schedule
    )
    if os.path.exists(path):
        with open(path, "rb") as f:
            clf_params = serialization.from_bytes(clf_params, f.read())
        print(f"noisy classifier read from {path}")
    else:
        with open(path, "wb") as f:
            f.write(serialization.to_bytes(clf_params))
        print(f"noisy classifier: {args.classifier_steps} steps, {secs:.0f} s (saved: {path})")

    xtr, ytr, xte, yte = real_digits()
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
