"""The evaluation command line: ``python -m jaxdiff.evaluation COMMAND ...``.

  fid    --real R --fake F        FID on FID-Inception pool3 features (R / F: image folder,
                                  image .npz / .npy, or a statistics .npz with mu / sigma)
  kid    --real R --fake F        KID (polynomial-kernel MMD^2 over subsets)
  pr     --real R --fake F        improved precision / recall (k-NN manifolds, --k 3)
  all    --real R --fake F        FID, KID, precision and recall from one feature pass
  stats  --images R --save S.npz  save FID reference statistics (pytorch-fid's format)
  clip   --images F --prompts P --clip DIR    CLIP score (P: .txt, one prompt per line, or .json)
  bpd    --workdir W --data D     bits/dim of a trained model by the probability-flow ODE and
                                  the discrete-time VLB

Every command prints a table and writes it as JSON (``--out``, default ``eval_COMMAND.json``).
The Inception weights come from ``--inception`` or ``$JAXDIFF_INCEPTION``; float image arrays
are read as [-1, 1] (jaxdiff's samples) unless ``--value_range 0,1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.evaluation import images as image_io


def _value_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. -1,1); got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"LOW must be < HIGH; got {text!r}")
    return lo, hi


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxdiff.evaluation",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", help="JSON file to write (default eval_COMMAND.json)")
    common.add_argument("--batch_size", type=int, default=200, help="images per device call")
    common.add_argument("--value_range", type=_value_range, default=(-1.0, 1.0),
                        help="range of float image arrays, LOW,HIGH (default -1,1)")  # fmt: skip
    common.add_argument("--no_progress", action="store_true", help="no progress bars")
    inception = argparse.ArgumentParser(add_help=False)
    inception.add_argument("--inception", help="pt_inception-2015-12-05-*.pth or its folder "
                           "(default $JAXDIFF_INCEPTION)")  # fmt: skip
    pair = argparse.ArgumentParser(add_help=False)
    pair.add_argument("--real", required=True, help="real images or reference statistics")
    pair.add_argument("--fake", required=True, help="generated images (or statistics for fid)")
    commands = {
        "fid": "Frechet Inception distance",
        "kid": "kernel Inception distance",
        "pr": "improved precision and recall",
        "all": "FID, KID, precision and recall",
    }
    for name, text in commands.items():
        q = sub.add_parser(name, help=text, parents=[common, inception, pair])
        if name == "fid":
            q.add_argument("--real_stats_cache", help="statistics .npz of --real: read if it "
                           "exists, else written after computing them")  # fmt: skip
        if name in ("kid", "all"):
            q.add_argument("--kid_subsets", type=int, default=100)
            q.add_argument("--kid_subset_size", type=int, default=1000)
        if name in ("pr", "all"):
            q.add_argument("--k", type=int, default=3, help="neighbourhood size")
    q = sub.add_parser("stats", help="save FID reference statistics", parents=[common, inception])
    q.add_argument("--images", required=True)
    q.add_argument("--save", required=True, help="the statistics .npz to write")
    q = sub.add_parser("clip", help="CLIP score", parents=[common])
    q.add_argument("--images", required=True)
    q.add_argument("--prompts", required=True, help=".txt (one per line) or .json list")
    q.add_argument("--clip", required=True, help="transformers CLIPModel directory")
    q = sub.add_parser("bpd", help="bits/dim (ODE and VLB)", parents=[common])
    q.add_argument("--workdir", required=True, help="a training workdir (its EMA parameters)")
    q.add_argument("--data", required=True, help="images on the data grid (folder, .npz, .npy)")
    q.add_argument("--num_bins", type=int, default=256, help="levels of the data (256: 8-bit)")
    q.add_argument("--methods", default="ode,vlb", help="comma list of ode, vlb")
    q.add_argument("--num_examples", type=int, default=None, help="first N images only")
    q.add_argument("--divergence", default="hutchinson", choices=("hutchinson", "exact"))
    q.add_argument("--variance_type", default="fixed_small",
                   choices=("fixed_small", "fixed_large", "learned_range"),
                   help="reverse variance of the VLB")  # fmt: skip
    q.add_argument("--rtol", type=float, default=1e-5, help="ODE solver relative tolerance")
    q.add_argument("--atol", type=float, default=1e-5, help="ODE solver absolute tolerance")
    q.add_argument("--labels", default="null", choices=("null", "data"),
                   help="a conditional model's labels: the null class or the data's")  # fmt: skip
    q.add_argument("--seed", type=int, default=0)
    return p


def _extractor(args):
    from jaxdiff.evaluation.features import inception_extractor

    return inception_extractor(args.inception, batch_size=args.batch_size)


def _features_or_stats(args, ext, path: str, need_features: bool) -> dict[str, Any]:
    """{"stats": FeatureStatistics or (mu, sigma), "features": array or None, "n": count}."""
    from jaxdiff.evaluation.stats import FeatureStatistics, load_statistics

    if image_io.is_statistics_file(path):
        if need_features:
            raise SystemExit(f"{path} holds statistics (mu, sigma); KID and precision/recall "
                             "need images.")  # fmt: skip
        mu, sigma, n = load_statistics(path)
        return {"mu": mu, "sigma": sigma, "n": n, "features": None, "checked": n is None}
    images = image_io.open_images(path, args.value_range)
    batches = images.batches(ext.batch_size)
    kw = dict(value_range=images.value_range, progress=not args.no_progress,
              total=images.num_images)  # fmt: skip
    if need_features:
        feats = np.concatenate(list(ext.batches(batches, **kw)))
        stats = FeatureStatistics().update(feats)
    else:  # streamed; warns itself when singular
        feats, stats = None, ext.statistics(batches, **kw)
    return {"mu": stats.mean, "sigma": stats.covariance, "n": stats.num_samples,
            "features": feats, "checked": feats is None}  # fmt: skip


def _pair(args) -> dict[str, Any]:
    from jaxdiff.evaluation.metrics import (
        gaussian_frechet_distance,
        kernel_inception_distance,
    )
    from jaxdiff.evaluation.precision_recall import precision_recall
    from jaxdiff.evaluation.stats import save_statistics, warn_if_singular

    need = args.command in ("kid", "pr", "all")
    ext = _extractor(args)
    cache = getattr(args, "real_stats_cache", None)
    if cache and os.path.isfile(cache):
        print(f"FID statistics of the real images from {cache}")
        real = _features_or_stats(args, ext, cache, False)
    else:
        real = _features_or_stats(args, ext, args.real, need)
        if cache:
            save_statistics(cache, real["mu"], real["sigma"], real["n"])
    fake = _features_or_stats(args, ext, args.fake, need)
    out = {"real": args.real, "fake": args.fake, "num_real": real["n"], "num_fake": fake["n"]}
    if args.command in ("fid", "all"):
        for side, name in ((real, "real"), (fake, "fake")):
            if not side["checked"]:
                warn_if_singular(side["n"], len(side["mu"]), f"the {name} images")
        out["fid"] = gaussian_frechet_distance(real["mu"], real["sigma"], fake["mu"], fake["sigma"])
    if args.command in ("kid", "all"):
        kid, std = kernel_inception_distance(real["features"], fake["features"],
                                             num_subsets=args.kid_subsets,
                                             subset_size=args.kid_subset_size)  # fmt: skip
        out.update(kid=kid, kid_std=std)
    if args.command in ("pr", "all"):
        pr = precision_recall(real["features"], fake["features"], k=args.k)
        out.update(precision=pr["precision"], recall=pr["recall"])
    return out


def _stats(args) -> dict[str, Any]:
    ext = _extractor(args)
    images = image_io.open_images(args.images, args.value_range)
    stats = ext.statistics(images.batches(ext.batch_size), value_range=images.value_range,
                           progress=not args.no_progress, total=images.num_images)  # fmt: skip
    stats.save(args.save)
    return {"images": args.images, "num_images": stats.num_samples, "statistics": args.save}


def _clip(args) -> dict[str, Any]:
    from jaxdiff.evaluation.clip_score import ClipScorer

    with open(args.prompts, encoding="utf-8") as f:
        if args.prompts.endswith(".json"):
            prompts = json.load(f)
        else:
            prompts = [line.rstrip("\n") for line in f]
    images = image_io.open_images(args.images, args.value_range)
    if len(prompts) != images.num_images:
        raise SystemExit(f"{args.prompts}: {len(prompts)} prompts for {images.num_images} images.")
    scorer = ClipScorer(args.clip, batch_size=args.batch_size)
    scores = []
    for i, batch in enumerate(images.batches(args.batch_size)):
        chunk = prompts[i * args.batch_size : i * args.batch_size + len(batch)]
        scores.append(scorer(batch, chunk, value_range=images.value_range))
    scores = np.concatenate(scores)
    return {"images": args.images, "num_images": len(scores), "clip_score": float(scores.mean()),
            "clip_score_std": float(scores.std())}  # fmt: skip


def _print_table(title: str, results: dict[str, Any]) -> None:
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in results.items()]
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 3 + max(len(v) for _, v in rows)))
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one command (see module doc); returns what it wrote as JSON."""
    args = _parser().parse_args(argv)
    if args.command in ("fid", "kid", "pr", "all"):
        results = _pair(args)
    elif args.command == "stats":
        results = _stats(args)
    elif args.command == "clip":
        results = _clip(args)
    else:
        from jaxdiff.evaluation.cli_bpd import bits_per_dim

        results = bits_per_dim(args)
    _print_table(f"jaxdiff.evaluation {args.command}", results)
    out = args.out or f"eval_{args.command}.json"
    with open(out, "w") as f:
        json.dump({"command": args.command, **results}, f, indent=2)
    print(f"\nwrote {os.path.abspath(out)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
