"""The GPU suite: one command, one table, under 8 minutes on one GPU.

    python benchmarks/gpu_suite.py            # full sizes (a GPU / TPU)
    python benchmarks/gpu_suite.py --tiny     # the same tables at tiny sizes (CPU, tests)

Rows:
  (1) DDPM-CIFAR10 U-Net (35.7M parameters) train step, bf16 compute, float32 params,
      batch 128 at 32x32: images/s and MFU = XLA's cost-analysis FLOPs of the compiled step /
      step time / the device's peak dense bf16 FLOP/s (a table of known devices; "n/a" when
      the device is not in it, e.g. a CPU).
  (2) An SD-1.5-sized UNet2DConditionModel (random weights, 860M parameters) at 64x64x4
      latents with classifier-free guidance (one doubled-batch call per evaluation, 77x768
      context): U-Net evaluations/s at batch 1 and 8, bf16.
  (3) The attention implementation on (2) at batch 8: jaxdiff's "flash", "xla"
      (`jax.nn.dot_product_attention`, XLA's choice) and "cudnn" (its cuDNN fused kernel;
      GPU only).
Timings: medians of interleaved rounds after warm-up, `block_until_ready`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiff
from jaxdiff import models, training
from jaxdiff.models import diffusers_config

# Peak dense bf16 FLOP/s by device kind (vendor data sheets; no sparsity).
PEAK_BF16 = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
}

# The UNet2DConditionModel of Stable Diffusion 1.5 (its published config.json).
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
TINY_UNET = {
    **SD15_UNET,
    "attention_head_dim": 2,
    "block_out_channels": [32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}


def random_params(model, *args, **kwargs):
    """Random weights of the right shapes (N(0, 0.02), host numpy: no init program to compile)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32), s.dtype), shapes
    )


def timed(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, interleaved rounds after two warm-ups."""
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_flops() -> float | None:
    """The device's peak bf16 FLOP/s, if known."""
    return PEAK_BF16.get(jax.devices()[0].device_kind)


def train_step_row(tiny: bool, rounds: int) -> dict:
    """(1): the DDPM-CIFAR10 train step."""
    batch, size = (2, 8) if tiny else (128, 32)
    preset = models.TINY(num_classes=None) if tiny else models.DDPM_CIFAR10()
    model = preset.clone(dtype=jnp.bfloat16)
    schedule = jaxdiff.make_schedule("linear")
    x = jnp.zeros((batch, size, size, 3))
    params = random_params(model, x, jnp.zeros((batch,)))
    tx = optax.adam(1e-4)
    loss = training.make_diffusion_loss_fn(
        model.apply, schedule=schedule, compute_dtype=jnp.bfloat16
    )
    step = jax.jit(training.make_train_step(loss, tx), donate_argnums=0)
    state = training.create_train_state(params, tx)
    data = {"image": jax.random.normal(jax.random.key(1), x.shape)}
    key = jax.random.key(2)
    compiled = step.lower(state, data, key).compile()
    flops = (compiled.cost_analysis() or {}).get("flops")
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data, key)
        return metrics

    sec = timed({"step": run}, rounds)["step"]
    peak = peak_flops()
    mfu = flops / sec / peak if flops and peak else None
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    return {
        "row": f"train step {'TINY' if tiny else 'DDPM-CIFAR10'} ({n_params / 1e6:.1f}M), "
        f"bf16, batch {batch} at {size}x{size}",
        "images/s": batch / sec,
        "step ms": sec * 1e3,
        "GFLOP/step": None if flops is None else flops / 1e9,
        "MFU": mfu,
    }


def sd_unet(tiny: bool, implementation: str):
    """(module, params, context width) of the SD-1.5-sized U-Net with random weights."""
    config = TINY_UNET if tiny else SD15_UNET
    kwargs, in_channels = diffusers_config.unet_kwargs(config, source="SD-1.5 config")
    kwargs.update(dtype=jnp.bfloat16, attention_impl=implementation)
    model = models.UNet(**kwargs)
    size = 8 if tiny else 64
    ctx = config["cross_attention_dim"]
    x = jnp.zeros((1, size, size, in_channels))
    params = random_params(model, x, jnp.zeros((1,)), context=jnp.zeros((1, 77, ctx)))
    return model, params, ctx, size, in_channels


def guided_eval_fn(model, params, ctx, size, channels, batch):
    """One classifier-free-guided evaluation: the U-Net on the doubled batch, mixed at w=7.5."""
    x = jax.random.normal(jax.random.key(3), (batch, size, size, channels), jnp.bfloat16)
    t = jnp.full((batch,), 500.0)
    context = jax.random.normal(jax.random.key(4), (batch, 77, ctx), jnp.bfloat16)
    uncond = jnp.zeros_like(context)

    def fn(p, x, t, c, u):
        out = model.apply({"params": p}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          context=jnp.concatenate([c, u]))  # fmt: skip
        cond, unc = jnp.split(out.astype(jnp.float32), 2)
        return unc + 7.5 * (cond - unc)

    f = jax.jit(fn)
    return lambda: f(params, x, t, context, uncond)


def unet_rows(tiny: bool, rounds: int) -> list[dict]:
    """(2) and (3): guided U-Net evaluations/s by batch and by attention implementation."""
    on_gpu = jax.default_backend() == "gpu"
    impls = ["flash", "xla"] + (["cudnn"] if on_gpu else [])
    rows = []
    fns = {}
    for impl in impls:
        try:
            model, params, ctx, size, ch = sd_unet(tiny, impl)
        except ValueError as err:  # an implementation this jaxdiff build does not have
            rows.append({"row": f"SD U-Net attention={impl}", "note": str(err)[:80]})
            continue
        batches = (1, 8) if impl == impls[0] else (8,)
        for batch in batches:
            fns[(impl, batch)] = guided_eval_fn(model, params, ctx, size, ch, batch)
    med = timed(fns, rounds)
    label = "tiny SD-like U-Net" if tiny else "SD-1.5 U-Net (860M)"
    for (impl, batch), sec in med.items():
        rows.append(
            {
                "row": f"{label} CFG eval, bf16, {size}x{size}x4, batch {batch}, attention={impl}",
                "evals/s": 1.0 / sec,
                "images/s per 50 steps": batch / sec / 50,
                "eval ms": sec * 1e3,
            }
        )
    if not on_gpu:
        rows.append({"row": "attention=cudnn", "note": f"n/a on {jax.default_backend()}"})
    return rows


def fmt(value, name: str = "") -> str:
    if value is None:
        return "n/a"
    if name == "MFU":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, tests)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, {dev.platform} {dev.device_kind}, {len(jax.devices())} "
          f"device(s), {os.cpu_count()} CPUs, peak bf16 {fmt(peak_flops())} FLOP/s")  # fmt: skip
    rows = [train_step_row(args.tiny, args.rounds), *unet_rows(args.tiny, args.rounds)]
    for row in rows:
        rest = ", ".join(f"{k} {fmt(v, k)}" for k, v in row.items() if k != "row")
        print(f"| {row['row']} | {rest} |")
    print(f"total {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
