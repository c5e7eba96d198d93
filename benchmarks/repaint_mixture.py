"""RePaint against the exact conditional of a two-component Gaussian mixture.

The target and its closed-form denoiser are those of ``tests/test_inpainting.py``: x_0 in 2-D
from an equal mixture of N((0.5, 0.8), C) and N((-0.5, -0.4), C), C = 0.05 [[1, .5], [.5, 1]];
coordinate 0 is known (0.1), coordinate 1 is inpainted. Its exact conditional is the mixture
0.881 N(0.6, 0.0375) + 0.119 N(-0.1, 0.0375) (mean 0.517, variance 0.089). RePaint runs 250
steps of the linear schedule with jump length 1 and r resamplings, either as diffusers'
``RePaintScheduler`` (eta 1) or with the original code's kernels: the grid's re-noising kernel
and DDPM steps with the exact reverse-step variance (a closed-form learned range). Printed:
the mean's bias (with its Monte-Carlo standard error), the variance against the exact one,
and the weight of the upper mode P(x_1 > 0.25). Run from the repository root::

    python benchmarks/repaint_mixture.py [--draws 4000] [--r 1 10 40 80 160]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import test_inpainting as target  # noqa: E402  (the closed-form mixture and its denoiser)

import jaxdiff  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=4000)
    p.add_argument("--r", type=int, nargs="+", default=[1, 10, 40, 80, 160])
    p.add_argument("--r_original", type=int, nargs="+", default=[10, 40, 80],
                   help="r for the original code's kernels")  # fmt: skip
    args = p.parse_args()
    w, means, var = target.mixture_conditional()
    mean = float(np.sum(w * means))
    variance = float(np.sum(w * (var + means**2)) - mean**2)
    erfc = np.vectorize(math.erfc)
    upper = float(np.sum(w * 0.5 * erfc((0.25 - means) / np.sqrt(2 * var))))
    n = args.draws
    se = math.sqrt(variance / n)
    print(f"exact conditional: mean {mean:.4f}, variance {variance:.4f}, P(x > 0.25) "
          f"{upper:.3f}; {n} draws (standard error of the mean {se:.4f})")  # fmt: skip
    image = jnp.zeros((n, 2)).at[:, 0].set(target.MIX_A)
    noise = jax.random.normal(jax.random.key(0), (n, 2))
    runs = [("diffusers (DDIM, eta 1)", r, target.mixture_eps_model, {}) for r in args.r]
    runs += [
        ("respaced, exact variance", r, target.oracle_mixture_model,
         dict(jump_kernel="respaced", variance_type="learned_range"))
        for r in args.r_original
    ]  # fmt: skip
    rows = []
    for name, r, model, kw in runs:
        kw = dict(eta=1.0) if not kw else kw
        t0 = time.perf_counter()
        x = jaxdiff.sample(model, noise, schedule=target.SCHEDULE, sampler="repaint",
                           num_steps=250, key=jax.random.key(1), image=image,
                           mask=target.MASK, clip_sample=False, jump_length=1,
                           jump_n_sample=r, **kw)  # fmt: skip
        u = np.asarray(x)[:, 1]
        row = (f"| {name} | {r} | {u.mean() - mean:+.4f} | {u.var():.4f} "
               f"({u.var() / variance - 1:+.0%}) | {np.mean(u > 0.25):.3f} | "
               f"{time.perf_counter() - t0:.0f} |")  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    print("\n| kernels | r | mean bias | variance | P(x > 0.25) | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"| exact | | 0 (s.e. {se:.4f}) | {variance:.4f} | {upper:.3f} | |")


if __name__ == "__main__":
    main()
