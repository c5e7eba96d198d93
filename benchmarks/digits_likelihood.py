"""Bits/dim of the default digits model on the 297 held-out digits: probability-flow ODE and
discrete-time VLB.

The digits have 17 levels (0..16, mapped to [-1, 1] as x / 8 - 1), so bits/dim here are for
17-level data (the uniform distribution scores log2(17) = 4.09); the ODE dequantises each value
uniformly over its bin of width 2/16. A class-conditional model is evaluated unconditionally
(its null class, learned with label dropout) unless ``--labels data``.

  python benchmarks/digits_likelihood.py --workdir=workdirs/default
  python benchmarks/digits_likelihood.py --workdir=workdirs/default --divergence exact \
      --num_examples 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def test_digits(path: str) -> None:
    """The digits builder's test split (the last 297 of scikit-learn's order) as an .npz."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    np.savez(path, images=x[1500:], labels=d.target[1500:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/default")
    p.add_argument("--methods", default="ode,vlb")
    p.add_argument("--divergence", default="hutchinson", choices=("hutchinson", "exact"))
    p.add_argument("--labels", default="null", choices=("null", "data"))
    p.add_argument("--variance_type", default="fixed_small", choices=("fixed_small", "fixed_large"))
    p.add_argument("--num_examples", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=297)
    p.add_argument("--out", default=None, help="JSON (default <workdir>/eval_bpd.json)")
    args = p.parse_args(argv)
    from jaxdiff.evaluation import cli

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "digits_test.npz")
        test_digits(data)
        argv = ["bpd", "--workdir", args.workdir, "--data", data, "--num_bins", "17",
                "--methods", args.methods, "--divergence", args.divergence, "--labels",
                args.labels, "--variance_type", args.variance_type,
                "--batch_size", str(args.batch_size),
                "--out", args.out or os.path.join(args.workdir, "eval_bpd.json")]  # fmt: skip
        if args.num_examples:
            argv += ["--num_examples", str(args.num_examples)]
        return cli.main(argv)


if __name__ == "__main__":
    main()
