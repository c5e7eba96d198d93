"""Latent diffusion on the digits at 32x32, measured like the pixel model.

Trains (unless the workdirs hold finished runs) configs/digits_vae.py, then
configs/digits_latent.py on its latents, and the pixel-space configs/default.py, timing each;
then reports:
  * the VAE: reconstruction PSNR (posterior mean) on the 297 held-out test digits at 32x32,
    and the KL divergence per latent dimension (nats) of their posteriors;
  * the latent model's class-balanced samples (297, classes cycling 0-9), decoded and
    box-downsampled 4x4 to 8x8, against the held-out 8x8 test digits: pixel Frechet
    distance, its ratio to the floor (N random 8x8 training digits vs the same test digits),
    and the accuracy of a logistic-regression classifier trained on the real training digits;
  * the pixel model's samples, measured the same way (as benchmarks/digits_quality.py).
The "resize floor" is the distance of 32x32 training digits (as the VAE and the latent model
see them), downsampled the same way, to the test digits: what perfect 32x32 samples reach;
the "VAE floor" that of their reconstructions by the VAE: what perfect latent samples reach.

  python benchmarks/latent_digits.py                       # train what is missing, evaluate
  python benchmarks/latent_digits.py --skip_train          # evaluate existing workdirs only
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
sys.path.insert(0, os.path.join(ROOT, "configs"))

# (sampler, num_steps, guidance_scale, options of the pixel model). The latent model's DDIM /
# DDPM do not clip (its Generator's default), the pixel model's do, as in digits_quality.py.
ROWS = [
    ("ddim", 20, 1.0, {"clip_sample": True}),
    ("ddim", 50, 1.0, {"clip_sample": True}),
    ("dpm_solver", 20, 1.0, {}),
    ("ddim", 20, 2.0, {"clip_sample": True}),
]


def _train(name, config, workdir):
    from jaxdiff.experiment import train_and_evaluate

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = train_and_evaluate(config, workdir)
    secs = time.perf_counter() - t0
    print(
        f"{name}: {out['step']} steps in {secs:.0f} s (load average {load:.1f} -> "
        f"{os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return secs


def train_all(args) -> dict[str, float]:
    """Train the three runs (each resumes or returns at once when already finished)."""
    import default as pixel_config
    import digits_latent
    import digits_vae

    times = {"vae": _train("VAE", digits_vae.get_config(), args.vae_workdir)}
    latent = digits_latent.get_config()
    latent.latent.vae = args.vae_workdir
    times["latent"] = _train("latent U-Net", latent, args.latent_workdir)
    times["pixel"] = _train("pixel U-Net", pixel_config.get_config(), args.pixel_workdir)
    return times


def down8(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, C] -> [N, 8, 8, C] means of 4x4 blocks."""
    n, h, w, c = images.shape
    return images.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))


def digits_at_32(split: str) -> np.ndarray:
    """A split of the digits at 32x32, exactly as the runs' pipeline resizes them."""
    from jaxdiff import data

    builder = data.get_builder("digits")
    n = data.dataset_metadata(builder).split_sizes[split]
    it = data.make_pipeline(
        builder, split=split, global_batch_size=n, image_size=32, shuffle=False, num_epochs=1
    )
    return next(it)["image"]


def reconstruct(workdir: str, images: np.ndarray):
    """(reconstructions from the posterior mean, posterior) of the VAE of ``workdir``."""
    import jax

    from jaxdiff.experiment.autoencoder_run import load_autoencoder_workdir

    module, params, _ = load_autoencoder_workdir(workdir)
    rec, posterior = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, images)
    return np.asarray(rec), posterior


def vae_metrics(workdir: str) -> tuple[float, float, float]:
    """(mean PSNR, its std over images, KL per latent dimension) on the test digits."""
    from jaxdiff.experiment.autoencoder import psnr

    x = digits_at_32("test")
    rec, posterior = reconstruct(workdir, x)
    values = psnr(x, rec)
    kl_per_dim = float(np.mean(np.asarray(posterior.kl())) / posterior.mean[0].size)
    return float(values.mean()), float(values.std()), kl_per_dim


def quality_rows(gen, rows, latent: bool, xte, clf, floor):
    """[(sampler, steps, w, FD, FD / floor, accuracy, seconds)] of class-balanced samples."""
    from jaxdiff.evaluation import frechet_distance, pixel_features

    n = len(xte)
    labels = np.arange(n) % 10
    out = []
    for sampler, steps, scale, options in rows:
        t0 = time.perf_counter()
        images, _ = gen.sample(
            num_samples=n, sampler=sampler, num_steps=steps, guidance_scale=scale,
            labels=labels, seed=1, batch_size=n, options={} if latent else options,
            progress=False,
        )  # fmt: skip
        secs = time.perf_counter() - t0
        images = np.clip(down8(images) if latent else images, -1.0, 1.0)
        fd = frechet_distance(pixel_features(images), pixel_features(xte))
        acc = float(np.mean(clf.predict(pixel_features(images)) == labels))
        out.append((sampler, steps, scale, fd, fd / floor, acc, secs))
        print(f"  {sampler} x{steps} w={scale}: FD {fd:.3f} ({fd / floor:.2f}x), acc {acc:.3f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae_workdir", default="workdirs/digits_vae")
    p.add_argument("--latent_workdir", default="workdirs/digits_latent")
    p.add_argument("--pixel_workdir", default="workdirs/default")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--floor_draws", type=int, default=20)
    args = p.parse_args(argv)

    from absl import logging
    from digits_quality import real_digits
    from sklearn.linear_model import LogisticRegression

    from jaxdiff.evaluation import frechet_distance, pixel_features
    from jaxdiff.experiment import load_workdir

    logging.set_verbosity(logging.WARNING)
    times = {} if args.skip_train else train_all(args)
    psnr_mean, psnr_std, kl = vae_metrics(args.vae_workdir)
    print(f"VAE on the 297 test digits at 32x32: PSNR {psnr_mean:.2f} +- {psnr_std:.2f} dB, "
          f"KL {kl:.3f} nats per latent dimension")  # fmt: skip

    xtr, ytr, xte, _ = real_digits()
    clf = LogisticRegression(max_iter=5000).fit(pixel_features(xtr), ytr)
    rng = np.random.default_rng(0)
    n = len(xte)
    train32 = digits_at_32("train")
    recon32 = np.clip(reconstruct(args.vae_workdir, train32)[0], -1.0, 1.0)
    floors = {"8x8": [], "resize": [], "vae": []}
    for _ in range(args.floor_draws):
        pick = rng.choice(len(xtr), n, replace=False)
        for name, x in (("8x8", xtr), ("resize", down8(train32)), ("vae", down8(recon32))):
            floors[name].append(frechet_distance(pixel_features(x[pick]), pixel_features(xte)))
    floor = float(np.mean(floors["8x8"]))
    print(f"floor (8x8 train vs test, N={n}): {floor:.3f} +- {np.std(floors['8x8']):.3f}")
    print(f"resize floor (32x32 train digits, downsampled): {np.mean(floors['resize']):.3f}; "
          f"VAE floor (their reconstructions): {np.mean(floors['vae']):.3f}")  # fmt: skip

    print("latent model:")
    latent = quality_rows(load_workdir(args.latent_workdir), ROWS, True, xte, clf, floor)
    print("pixel model:")
    pixel = quality_rows(load_workdir(args.pixel_workdir), ROWS, False, xte, clf, floor)
    print("\n| model | sampler | steps | guidance | pixel FD | FD / floor | class accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in (("latent (32x32)", latent), ("pixel (8x8)", pixel)):
        for sampler, steps, scale, fd, ratio, acc, _ in rows:
            cells = [name, sampler, steps, scale, f"{fd:.3f}", f"{ratio:.2f}", f"{acc:.1%}"]
            print("| " + " | ".join(map(str, cells)) + " |")
    if times:
        vae, lat, pix = times["vae"], times["latent"], times["pixel"]
        print(f"\ntraining wall time: VAE {vae:.0f} s + latent U-Net {lat:.0f} s = ", end="")
        print(f"{vae + lat:.0f} s; pixel U-Net {pix:.0f} s")


if __name__ == "__main__":
    main()
