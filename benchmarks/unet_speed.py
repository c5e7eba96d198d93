"""Training-step speed of jaxdiff's U-Net against diffusers' PyTorch U-Net on CPU.

For one architecture, batch and input, times a full training step (forward, backward, Adam)
of jaxdiff (one jitted step, donated state) and of the same model in PyTorch (diffusers'
UNet2DModel / UNet2DConditionModel built from jaxdiff's export, so both hold the same
weights: the forward outputs are compared first). The two are interleaved in one process,
alternating which goes first, after warm-up; reported are medians over the rounds and the
ratio torch_time / jaxdiff_time (> 1: jaxdiff is faster). Also reported: XLA's FLOP count of
the step, the achieved FLOP/s, and the FLOP/s of a jitted float32 1024^3 matmul measured in
the same run; the load average and this process's share of the CPUs (other users of the
machine slow both sides, PyTorch usually more).

Environment: torch 2.13.0 (CPU) and diffusers 0.39.0 together with jax 0.10.2, flax 0.12.8
and optax, e.g. the reference environment with jax added
(``pip install "jax[cpu]==0.10.2" flax==0.12.8 optax==0.2.8``). Run from the repository root:

    /work/refenv/bin/python benchmarks/unet_speed.py                 # unet2d at 16 and 32 px
    /work/refenv/bin/python benchmarks/unet_speed.py --config cond   # cross-attention U-Net
    /work/refenv/bin/python benchmarks/unet_speed.py --config digits --sizes 8 --batch 64
    /work/refenv/bin/python benchmarks/unet_speed.py --ynn           # + XLA's YNN conv flag

Both frameworks use all the machine's cores (torch.set_num_threads(os.cpu_count()); XLA's
CPU client uses one intra-op thread per core), or one thread each with ``--threads 1``
(``--xla_cpu_multi_thread_eigen=false``), which is less skewed when other processes share the
machine: a multi-threaded PyTorch step slows down far more than XLA's when a core is taken.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CONFIGS = {
    # DDPM-style UNet2DModel: three levels, self-attention at the second level and the middle.
    "unet2d": dict(channels=(32, 64, 64), num_res_blocks=2, attention_levels=(1,), head_dim=32,
                   norm_groups=32, flip_sin_to_cos=False, freq_shift=1),
    # Latent-diffusion-style UNet2DConditionModel: transformer blocks with cross-attention.
    "cond": dict(channels=(32, 64, 64), num_res_blocks=2, attention_levels=(1, 2), num_heads=2,
                 attention_type="transformer", context_dim=64, norm_groups=32),
    # jaxdiff's DIGITS preset (class-conditional, 8x8x1).
    "digits": "DIGITS",
}  # fmt: skip


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="unet2d")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=3, help="image channels")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--steps", type=int, default=2, help="steps per round and framework")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="threads for each framework (1: single-threaded XLA and torch)",
    )
    p.add_argument("--ynn", action="store_true", help=f"set XLA_FLAGS={YNN_FLAG}")
    return p.parse_args()


def _cpu_share(wall: float, cpu: float) -> str:
    return f"{100 * cpu / (wall * os.cpu_count()):.0f}%"


def _cpu_time() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _matmul_peak(jax, jnp) -> float:
    """GFLOP/s of a jitted float32 1024^3 matmul (median of 10)."""
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * 1024**3 / np.median(ts) / 1e9


def _build(args, jax, jnp):
    """jaxdiff module + params, and the same model in diffusers (from jaxdiff's export)."""
    import torch
    from diffusers import UNet2DConditionModel, UNet2DModel

    from jaxdiff.models import DIGITS, UNet, export_diffusers_unet

    spec = CONFIGS[args.config]
    module = DIGITS(dropout=0.0) if spec == "DIGITS" else UNet(**spec)
    size = args.sizes[0]
    x = jnp.zeros((1, size, size, args.channels))
    labels = jnp.zeros(1, jnp.int32) if module.num_classes else None
    ctx = jnp.zeros((1, 4, module.context_dim)) if module.context_dim else None
    params = jax.jit(module.init)(jax.random.key(0), x, jnp.zeros(1), labels, ctx)["params"]
    with tempfile.TemporaryDirectory() as tmp:
        export_diffusers_unet(module, params, tmp)
        cls = UNet2DConditionModel if module.context_dim else UNet2DModel
        torch_model = cls.from_pretrained(tmp).to(torch.float32)
    return module, params, torch_model


def _inputs(args, module, size, rng):
    b, c = args.batch, args.channels
    data = dict(
        x=rng.standard_normal((b, size, size, c), dtype=np.float32),
        t=rng.uniform(0, 999, b).astype(np.float32),
        target=rng.standard_normal((b, size, size, module.out_channels or c), dtype=np.float32),
    )
    if module.num_classes:
        data["labels"] = rng.integers(0, module.num_classes, b).astype(np.int32)
    if module.context_dim:
        data["context"] = rng.standard_normal((b, 8, module.context_dim), dtype=np.float32)
    return data


def _jax_step(module, params, data, jax, jnp, optax):
    opt = optax.adam(1e-4)
    inputs = {k: jnp.asarray(v) for k, v in data.items()}

    def loss_fn(p, d):
        out = module.apply({"params": p}, d["x"], d["t"], d.get("labels"), d.get("context"))
        return jnp.mean((out - d["target"]) ** 2)

    def step(p, s, d):
        loss, g = jax.value_and_grad(loss_fn)(p, d)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state = [jax.tree.map(jnp.array, params), opt.init(params)]
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, inputs).compile()
    flops = compiled.cost_analysis().get("flops", float("nan"))

    def run(n):
        for _ in range(n):
            state[0], state[1], loss = compiled(state[0], state[1], inputs)
        loss.block_until_ready()

    return run, flops


def _torch_step(model, data, torch):
    def t_(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    x, target = (t_(data[k].transpose(0, 3, 1, 2)) for k in ("x", "target"))
    kw = dict(timestep=t_(data["t"]))
    if "labels" in data:
        kw["class_labels"] = t_(data["labels"].astype(np.int64))
    if "context" in data:
        kw["encoder_hidden_states"] = t_(data["context"])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = ((model(x, **kw).sample - target) ** 2).mean()
            loss.backward()
            opt.step()

    return run


def _parity(module, params, torch_model, data, jax, jnp, torch) -> float:
    """max |jaxdiff - torch| / std(torch) of the forward pass on the benchmark inputs."""
    d = {k: jnp.asarray(v) for k, v in data.items()}
    out = module.apply({"params": params}, d["x"], d["t"], d.get("labels"), d.get("context"))
    kw = dict(timestep=torch.from_numpy(data["t"]))
    if "labels" in data:
        kw["class_labels"] = torch.from_numpy(data["labels"].astype(np.int64))
    if "context" in data:
        kw["encoder_hidden_states"] = torch.from_numpy(data["context"])
    torch_model.eval()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(data["x"].transpose(0, 3, 1, 2)), **kw).sample
    ref = ref.numpy().transpose(0, 2, 3, 1)
    return float(np.abs(np.asarray(out) - ref).max() / ref.std())


def _interleave(run_jax, run_torch, args) -> tuple[np.ndarray, np.ndarray]:
    """Per-step seconds of each framework over the rounds (alternating which runs first)."""
    run_jax(2)
    run_torch(2)  # warm-up
    times = {"jax": [], "torch": []}
    runs = {"jax": run_jax, "torch": run_torch}
    for r in range(args.rounds):
        for name in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
            t0 = time.perf_counter()
            runs[name](args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps)
    return np.array(times["jax"]), np.array(times["torch"])


def main() -> None:
    args = _parse()
    flags = [os.environ.get("XLA_FLAGS", "")] + [YNN_FLAG] * args.ynn
    if args.threads == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, cpus={os.cpu_count()}")  # fmt: skip
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
    module, params, torch_model = _build(args, jax, jnp)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    print(f"config {args.config}: {n_params / 1e6:.2f}M parameters, batch {args.batch}")
    rng = np.random.default_rng(0)
    inputs = {size: _inputs(args, module, size, rng) for size in args.sizes}
    # Parity before any training step changes the PyTorch weights.
    errors = {
        s: _parity(module, params, torch_model, d, jax, jnp, torch) for s, d in inputs.items()
    }
    for size, data in inputs.items():
        err = errors[size]
        run_jax, flops = _jax_step(module, params, data, jax, jnp, optax)
        run_torch = _torch_step(torch_model, data, torch)
        peak = _matmul_peak(jax, jnp)
        wall0, cpu0 = time.perf_counter(), _cpu_time()
        tj, tt = _interleave(run_jax, run_torch, args)
        share = _cpu_share(time.perf_counter() - wall0, _cpu_time() - cpu0)
        mj, mt = np.median(tj), np.median(tt)
        print(
            f"{size}x{size}: jaxdiff {mj * 1e3:.1f} ms, torch {mt * 1e3:.1f} ms, "
            f"ratio torch/jaxdiff {mt / mj:.2f} (per-round ratios {np.min(tt / tj):.2f}-"
            f"{np.max(tt / tj):.2f}); forward parity {err:.1e} x std; XLA {flops / 1e9:.2f} "
            f"GFLOP/step = {flops / mj / 1e9:.1f} GFLOP/s vs matmul peak {peak:.1f} GFLOP/s; "
            f"CPU share {share}, load {open('/proc/loadavg').read().split()[0]}"
        )


if __name__ == "__main__":
    main()
