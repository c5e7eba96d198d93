"""The ``bpd`` command: bits/dim of a training workdir's EMA model on images (ODE and VLB)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdiff.evaluation import images as image_io
from jaxdiff.evaluation.features import to_unit_range
from jaxdiff.evaluation.likelihood import ode_bits_per_dim
from jaxdiff.evaluation.parallel import DataParallel
from jaxdiff.evaluation.vlb import vlb_bits_per_dim


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    """Images in [-1, 1] (float32 [N, H, W, C]) and labels of ``--data``."""
    data = image_io.open_images(args.data, args.value_range)
    x = 2.0 * to_unit_range(data.load(), data.value_range, rgb=False) - 1.0
    n = len(x) if args.num_examples is None else min(args.num_examples, len(x))
    labels = None if data.labels is None else np.asarray(data.labels[:n], np.int32)
    return x[:n].astype(np.float32), labels


def bits_per_dim(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ``bpd`` command (see `jaxdiff.evaluation.cli`)."""
    from jaxdiff.experiment import sampling, workdir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - {"ode", "vlb"}:
        raise SystemExit(f"--methods must be a comma list of ode, vlb; got {args.methods!r}.")
    gen = workdir.load_workdir(args.workdir)
    x, data_labels = load_data(args)
    if tuple(x.shape[1:]) != gen.image_shape:
        raise SystemExit(
            f"{args.data}: images {x.shape[1:]} but the model takes {gen.image_shape}."
        )
    labels = None
    if gen.num_classes:
        if args.labels == "data" and data_labels is None:
            raise SystemExit(f"{args.data} has no 'labels' array (--labels data).")
        labels = data_labels if args.labels == "data" else np.full(len(x), gen.num_classes)
    key = jax.random.key(args.seed)
    kw = dict(objective=gen.objective, sigma_data=gen.sigma_data)
    out: dict[str, Any] = {"workdir": args.workdir, "data": args.data, "num_images": len(x),
                           "num_bins": args.num_bins, "labels": args.labels if labels is not None
                           else "unconditional"}  # fmt: skip
    progress = not args.no_progress
    if "ode" in methods:

        def ode(params, batch):
            xb, index, lab = batch
            fn = sampling.model_fn_for_sampling(gen.model, params, **kw)
            cond = {} if labels is None else {"labels": lab}
            return ode_bits_per_dim(fn, xb, key, schedule=gen.schedule,
                                    prediction_type=gen.prediction_type, num_bins=args.num_bins,
                                    divergence=args.divergence, first_index=index[0],
                                    rtol=args.rtol, atol=args.atol,
                                    **cond)._asdict()  # fmt: skip

        run = DataParallel(ode, batch_size=args.batch_size)
        params = run.replicate(gen.params)
        start, res = time.time(), []
        lab_all = np.zeros(len(x), np.int32) if labels is None else labels
        for i in tqdm(range(0, len(x), run.batch_size), desc="ODE bits/dim", disable=not progress):
            j = min(i + run.batch_size, len(x))
            res.append(run(params, (x[i:j], np.arange(i, j), lab_all[i:j])))
        bpd = np.concatenate([r["bpd"] for r in res])
        evals = np.concatenate([r["num_evals"] for r in res])
        ok = np.concatenate([r["success"] for r in res])
        out.update(ode_bpd=float(bpd.mean()), ode_bpd_sem=float(bpd.std() / np.sqrt(len(bpd))),
                   ode_mean_evals=float(evals.mean()), ode_seconds=round(time.time() - start, 1),
                   ode_divergence=args.divergence, ode_failed=int((~ok).sum()))  # fmt: skip
    if "vlb" in methods:

        def apply(x_t, t, params, labels=None):
            return sampling.model_fn_for_sampling(gen.model, params, **kw)(x_t, t, labels=labels)

        start, parts = time.time(), []
        for i in tqdm(range(0, len(x), args.batch_size), desc="VLB bits/dim", disable=not progress):
            j = min(i + args.batch_size, len(x))
            cond = {"params": gen.params}
            if labels is not None:
                cond["labels"] = jnp.asarray(labels[i:j])
            parts.append(vlb_bits_per_dim(apply, x[i:j], jax.random.fold_in(key, 1),
                                          schedule=gen.schedule, first_index=i,
                                          prediction_type=gen.prediction_type,
                                          num_bins=args.num_bins,
                                          variance_type=args.variance_type, **cond))  # fmt: skip
        vlb = np.concatenate([p.bpd for p in parts])
        out.update(vlb_bpd=float(vlb.mean()), vlb_bpd_sem=float(vlb.std() / np.sqrt(len(vlb))),
                   vlb_prior=float(np.concatenate([p.prior for p in parts]).mean()),
                   vlb_decoder=float(np.concatenate([p.decoder for p in parts]).mean()),
                   vlb_variance_type=args.variance_type,
                   vlb_seconds=round(time.time() - start, 1))  # fmt: skip
    return out
