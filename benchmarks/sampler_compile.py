"""Compile once, run at model speed: the sampling loop's compile and per-step costs.

With the DIGITS U-Net preset (8x8x1, class-conditional; a small Flax conv denoiser stands in
if the preset cannot be built) behind a classifier-free-guidance model function (conditional
and unconditional halves in one batched call, mixed with a traced guidance scale):

  (i)   compile time of one jitted sampling function at 10 vs 1000 steps, ddim and
        dpm_solver: ``jax.jit(f).lower(...).compile()`` after ``jax.clear_caches()`` (the
        verdict), and first call minus steady-state call (batch 2, so that running 1000
        steps stays short); ratio 1000 / 10 (target <= 1.5); dpm_solver (dpmsolver++ 2M)
        with "trailing" spacing throughout, ddim with a traced eta;
  (ii)  no recompilation when the guidance scale, seed, eta (ddim, traced) or the noise
        change: jitted function's cache size and a trace counter, and the cache of the
        un-wrapped ``jaxdiff.sample`` call; PASS/FAIL;
  (iii) per-step overhead = time per sampler step inside the lax.scan / time of one jitted
        model call on the same batch (target <= 1.05), next to a host loop of jitted steps
        (``SamplingLoop``): interleaved rounds after warm-up, medians, block_until_ready;
  (iv)  the same ratio on the path sample.py and the training sample grids use
        (``experiment.sampling.Generator.sample``: parameters as arguments, per-sample keys and
        noise, labels), for every sampler family, unguided (guidance scale 1: one model call
        per step) and guided (scale 3: one doubled-batch call, compared with that call), at
        batch 64 and 256, for the DIGITS U-Net (8x8x1) and a 32x32x3 class-conditional U-Net.

    python benchmarks/sampler_compile.py             # parts (i)-(iv), ~25 min on 2 cores
    python benchmarks/sampler_compile.py --parts iv --matrix-rounds 5
    python benchmarks/sampler_compile.py --parts i,ii,iii --rounds 21 --batch 64
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff.samplers import driver

SCHEDULE = jaxdiff.make_schedule("linear")
NUM_CLASSES = 10
SHAPE = (8, 8, 1)
TRACES = {"count": 0}
# dpm_solver's default "linspace" grid repeats a timestep at 1000 steps (NaN output).
DPM_OPTIONS = {"timestep_spacing": "trailing"}


class ConvDenoiser(nn.Module):
    """Stand-in: a few 3x3 convolutions with a time and class embedding."""

    @nn.compact
    def __call__(self, x, t, labels):
        emb = nn.Dense(64)(jnp.stack([jnp.sin(t / 100.0), jnp.cos(t / 100.0)], -1))
        emb = emb + nn.Embed(NUM_CLASSES + 1, 64)(labels)
        h = nn.Conv(64, (3, 3))(x)
        for _ in range(4):
            h = h + nn.Conv(64, (3, 3))(nn.silu(h + nn.Dense(64)(emb)[:, None, None]))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def build_model(batch: int):
    """(flax module, params, description)."""
    x = jnp.zeros((batch, *SHAPE))
    t, labels = jnp.zeros((batch,)), jnp.zeros((batch,), jnp.int32)
    try:
        from jaxdiff.models import DIGITS

        module = DIGITS()
        params = module.init(jax.random.key(0), x, t, labels=labels)["params"]
        name = "DIGITS U-Net preset"
    except Exception as error:  # the model package is missing or broken in this checkout
        module = ConvDenoiser()
        params = module.init(jax.random.key(0), x, t, labels)["params"]
        name = f"stand-in conv denoiser ({type(error).__name__}: {error})"
    size = sum(p.size for p in jax.tree.leaves(params))
    return module, params, f"{name}, {size / 1e6:.2f}M parameters"


def make_guided(module):
    """model_fn(x, t, *, params, labels, scale): conditional + unconditional in one call."""

    def guided(x, t, *, params, labels, scale):
        TRACES["count"] += 1  # runs only while tracing
        null = jnp.full_like(labels, NUM_CLASSES)
        out = module.apply(
            {"params": params},
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            labels=jnp.concatenate([labels, null]),
        )
        cond, uncond = jnp.split(out, 2)
        return uncond + scale * (cond - uncond)

    return guided


def make_sample_fn(model_fn, sampler: str, steps: int):
    """A function of traced (params, noise, key, labels, scale, eta) to jit."""

    def f(params, noise, key, labels, scale, eta):
        opts = {"eta": eta} if sampler == "ddim" else DPM_OPTIONS
        cond = {"params": params, "labels": labels, "scale": scale}
        return jaxdiff.sample(
            model_fn, noise, schedule=SCHEDULE, sampler=sampler, num_steps=steps, key=key,
            cond=cond, **opts,
        )  # fmt: skip

    return f


def inputs(params, batch: int, seed: int = 0, scale: float = 2.0, eta: float = 0.0):
    key = jax.random.key(seed)
    noise = jax.random.normal(key, (batch, *SHAPE))
    labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    return (params, noise, jax.random.fold_in(key, 1), labels, jnp.float32(scale), jnp.float32(eta))


def block(x):
    return jax.block_until_ready(x)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------
# (i) compile time vs number of steps.


def compile_times(model_fn, params, batch: int, repeats: int) -> None:
    print(f"\n(i) compile time, 10 vs 1000 steps, batch {batch}: lower / compile medians of "
          f"{repeats} fresh compiles; first call - median of 2 steady calls, once")  # fmt: skip
    print(f"{'sampler':<12}{'steps':>6}{'lower s':>9}{'compile s':>11}{'total s':>9}"
          f"{'1st call - steady s':>21}")  # fmt: skip
    args = inputs(params, batch)
    for sampler in ("ddim", "dpm_solver"):
        res = {10: [], 1000: []}
        for _ in range(repeats):
            for steps in (10, 1000):  # interleaved
                res[steps].append(lower_compile(model_fn, sampler, steps, args))
        totals = {}
        for steps, rows in res.items():
            lower, comp = (statistics.median(col) for col in zip(*rows, strict=True))
            first = first_call(model_fn, sampler, steps, args)
            totals[steps] = (lower + comp, first)
            print(
                f"{sampler:<12}{steps:>6}{lower:9.2f}{comp:11.2f}{lower + comp:9.2f}{first:21.2f}"
            )
        r_lc = totals[1000][0] / totals[10][0]
        r_first = totals[1000][1] / totals[10][1]
        verdict = "PASS" if r_lc <= 1.5 else "FAIL"
        print(f"{sampler:<12} ratio 1000/10: lower+compile {r_lc:.2f} (target <= 1.5: {verdict}), "
              f"first call - steady {r_first:.2f}")  # fmt: skip


def lower_compile(model_fn, sampler: str, steps: int, args) -> tuple[float, float]:
    """(trace + lower s, XLA compile s) from cold caches."""
    f = make_sample_fn(model_fn, sampler, steps)
    jax.clear_caches()
    start = time.perf_counter()
    lowered = jax.jit(f).lower(*args)
    mid = time.perf_counter()
    lowered.compile()
    return mid - start, time.perf_counter() - mid


def first_call(model_fn, sampler: str, steps: int, args) -> float:
    """First call of a fresh jit minus its median steady-state call (cold caches)."""
    jax.clear_caches()
    g = jax.jit(make_sample_fn(model_fn, sampler, steps))
    start = time.perf_counter()
    out = block(g(*args))
    first = time.perf_counter() - start
    if not np.isfinite(np.asarray(out)).all():
        print(f"WARNING: {sampler} at {steps} steps returned non-finite values")
    return first - statistics.median(timed(g, *args) for _ in range(2))


# ----------------------------------------------------------------------------------------
# (ii) nothing traced recompiles.


def recompile_check(model_fn, params, batch: int) -> None:
    print("\n(ii) recompilation when guidance scale, seed, eta or noise change")
    for sampler in ("ddim", "dpm_solver"):
        g = jax.jit(make_sample_fn(model_fn, sampler, 10))
        TRACES["count"] = 0
        variants = [
            inputs(params, batch),
            inputs(params, batch, scale=0.0),  # guidance scale
            inputs(params, batch, scale=7.5),
            inputs(params, batch, seed=3),  # seed and noise
            inputs(params, batch, eta=1.0),  # eta (ignored by dpm_solver)
            inputs(params, batch, seed=5, scale=1.5, eta=0.3),
        ]
        outs = [np.asarray(g(*a)) for a in variants]
        distinct = len({o.tobytes() for o in outs})
        size, traces = g._cache_size(), TRACES["count"]
        verdict = "PASS" if size == 1 and traces == 1 else "FAIL"
        print(f"{sampler:<12} {len(variants)} calls: jit cache size {size}, model traced "
              f"{traces}x, {distinct} distinct outputs: {verdict}")  # fmt: skip
    eager_check(model_fn, params, batch)


def eager_check(model_fn, params, batch: int) -> None:
    """jaxdiff.sample called directly (its own jitted scan) with Python floats."""
    cache = driver._run_scan  # the one jitted loop behind jaxdiff.sample
    _, noise, key, labels, _, _ = inputs(params, batch)

    def call(seed, scale, eta):
        cond = {"params": params, "labels": labels, "scale": scale}
        block(jaxdiff.sample(
            model_fn, noise + seed, schedule=SCHEDULE, sampler="ddim", num_steps=10,
            key=jax.random.fold_in(key, seed), cond=cond, eta=eta,
        ))  # fmt: skip
        return cache._cache_size()

    sizes = [call(*v) for v in ((0, 2.0, 0.5), (1, 3.0, 1.0), (2, 0.0, 0.2), (3, 7.5, 0.7))]
    verdict = "PASS" if len(set(sizes)) == 1 else "FAIL"
    print(f"{'ddim eager':<12} 4 direct jaxdiff.sample calls, new seed/noise/scale/eta > 0 as "
          f"Python floats: scan cache sizes {sizes}: {verdict}")  # fmt: skip
    zero = call(4, 2.0, 0.0)
    print(
        f"{'':<12} then eta=0.0 (concrete): cache size {zero} (a concrete eta == 0 selects the "
        "noise-free loop, compiled once more; a traced eta never does)"
    )


# ----------------------------------------------------------------------------------------
# (iii) per-step overhead.


def host_loop_fn(model_fn, sampler: str, steps: int):
    """A Python loop over one jitted (model_input, model, step) function of traced k."""
    opts = {} if sampler == "ddim" else DPM_OPTIONS
    loop = jaxdiff.SamplingLoop(sampler, schedule=SCHEDULE, num_steps=steps, **opts)

    @jax.jit
    def one(state, k, params, labels, scale):
        state, x_in, t = loop.model_input(state, k)
        out = model_fn(x_in, t, params=params, labels=labels, scale=scale)
        return loop.step(state, k, out)

    def run(params, noise, key, labels, scale, eta):
        state = loop.init(noise)
        for k in range(loop.num_model_calls):
            state = one(state, jnp.int32(k), params, labels, scale)
        return loop.result(state)

    return run


def step_overhead(model_fn, params, batch: int, rounds: int) -> None:
    print(f"\n(iii) per-step time / one jitted model call (batch {batch}, CFG doubles it "
          f"inside the model call); medians of {rounds} interleaved rounds")  # fmt: skip
    args = inputs(params, batch)
    p, noise, _, labels, scale, _ = args
    t = jnp.full((batch,), 500.0)
    model = jax.jit(lambda x, t, p, y, s: model_fn(x, t, params=p, labels=y, scale=s))
    fns = {"model": lambda: model(noise, t, p, labels, scale)}
    for sampler in ("ddim", "dpm_solver"):
        for steps in (10, 50):
            g = jax.jit(make_sample_fn(model_fn, sampler, steps))
            fns[f"{sampler} scan {steps}"] = lambda g=g: g(*args)
    host = {s: host_loop_fn(model_fn, s, 10) for s in ("ddim", "dpm_solver")}
    fns["ddim host 10"] = lambda: host["ddim"](*args)
    fns["dpm_solver host 10"] = lambda: host["dpm_solver"](*args)
    for fn in fns.values():  # compile and warm up
        block(fn())
        block(fn())
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            reps = 10 if name == "model" else 1
            start = time.perf_counter()
            for _ in range(reps):
                block(fn())
            times[name].append((time.perf_counter() - start) / reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    m = med["model"]
    print(f"one model call: {m * 1e3:.2f} ms")
    print(f"{'sampler':<12}{'scan/step N=10':>16}{'N=50':>8}{'(T50-T10)/40':>14}"
          f"{'host loop/step':>16}")  # fmt: skip
    for sampler in ("ddim", "dpm_solver"):
        s10, s50 = med[f"{sampler} scan 10"], med[f"{sampler} scan 50"]
        diff = (s50 - s10) / 40
        h10 = med[f"{sampler} host 10"] / 10
        print(
            f"{sampler:<12}{s10 / 10 / m:16.2f}{s50 / 50 / m:8.2f}{diff / m:14.2f}{h10 / m:16.2f}"
        )
    print("(ratios to the median model call; target <= 1.05 for the scan)")
    fastest = {k: min(v) for k, v in times.items()}
    print(f"fastest rounds: model {fastest['model'] * 1e3:.2f} ms; scan/step N=50: "
          + ", ".join(f"{s} {fastest[f'{s} scan 50'] / 50 / fastest['model']:.2f}"
                      for s in ("ddim", "dpm_solver")))  # fmt: skip


# ----------------------------------------------------------------------------------------
# (iv) every sampler family on sample.py's path.

FAMILIES = {  # sampler -> options (a grid each family runs at 8 steps)
    "ddpm": {}, "ddim": {}, "pndm": {"skip_prk_steps": True}, "dpm_solver": DPM_OPTIONS,
    "unipc": {}, "deis": {}, "euler": {}, "euler_ancestral": {}, "heun": {}, "lcm": {},
    "edm": {},
}  # fmt: skip
MATRIX_STEPS = 8


def matrix_models():
    """(name, module, image shape) of part (iv)."""
    from jaxdiff import models

    yield "DIGITS 8x8x1", models.DIGITS(), (8, 8, 1)
    unet32 = models.UNet(
        channels=(32, 64, 64), num_res_blocks=1, attention_levels=(1,), head_dim=32,
        norm_groups=8, num_classes=NUM_CLASSES,
    )  # fmt: skip
    yield "U-Net 32x32x3 (32, 64, 64)", unet32, (32, 32, 3)


def overhead_matrix(batches, rounds: int) -> None:
    print(f"\n(iv) sample.py's path (Generator.sample), {MATRIX_STEPS} steps: time per model "
          f"call / one jitted model call (guided: / one doubled-batch call); medians of "
          f"{rounds} interleaved rounds")  # fmt: skip
    for name, module, shape in matrix_models():
        for batch in batches:
            matrix_cell(name, module, shape, batch, rounds)


def matrix_cell(name: str, module, shape, batch: int, rounds: int) -> float:
    """Part (iv) for one model and batch size; returns the worst ratio."""
    from jaxdiff.experiment.sampling import Generator

    x = jnp.zeros((batch, *shape))
    t, y = jnp.full((batch,), 500.0), jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    params = jax.jit(module.init)(jax.random.key(0), x, t, labels=y)["params"]
    gen = Generator(
        module, params, SCHEDULE, objective="diffusion", prediction_type="epsilon",
        sigma_data=0.5, image_shape=shape,
    )  # fmt: skip
    call = jax.jit(lambda p, x, t, y: module.apply({"params": p}, x, t, labels=y))
    x2, t2, y2 = (jnp.concatenate([a, a]) for a in (x, t, y))
    fns = {
        "model": functools.partial(call, params, x, t, y),
        "model 2B": functools.partial(call, params, x2, t2, y2),
    }
    calls = {}
    for sampler, opts in FAMILIES.items():
        calls[sampler] = jaxdiff.SamplingLoop(
            sampler, schedule=SCHEDULE, num_steps=MATRIX_STEPS, **opts
        ).num_model_calls
        for scale in (1.0, 3.0):
            fns[(sampler, scale)] = functools.partial(
                gen.sample, num_samples=batch, sampler=sampler, num_steps=MATRIX_STEPS,
                guidance_scale=scale, batch_size=batch, options=opts, progress=False,
            )  # fmt: skip
    med = _medians(fns, rounds)
    print(f"{name}, batch {batch}: model call {med['model'] * 1e3:.1f} ms, doubled "
          f"{med['model 2B'] * 1e3:.1f} ms; loadavg {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"  {'sampler':<16}{'calls':>6}{'unguided':>10}{'guided':>8}")
    worst = 0.0
    for sampler, k in calls.items():
        u = med[(sampler, 1.0)] / k / med["model"]
        g = med[(sampler, 3.0)] / k / med["model 2B"]
        worst = max(worst, u, g)
        print(f"  {sampler:<16}{k:6d}{u:10.2f}{g:8.2f}")
    print(f"  worst {worst:.2f} (target <= 1.05: {'PASS' if worst <= 1.05 else 'FAIL'})")
    return worst


def _medians(fns: dict, rounds: int) -> dict:
    for fn in fns.values():
        block(fn())
        block(fn())
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--compile-batch", type=int, default=2, help="batch of part (i)")
    parser.add_argument("--compile-repeats", type=int, default=3)
    parser.add_argument("--parts", default="i,ii,iii,iv", help="which parts to run")
    parser.add_argument("--matrix-batches", default="64,256")
    parser.add_argument("--matrix-rounds", type=int, default=5)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    start = time.perf_counter()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"loadavg at start {os.getloadavg()[0]:.2f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )  # noqa: E501
    if parts & {"i", "ii", "iii"}:
        module, params, name = build_model(args.batch)
        print(f"model: {name}; batch {args.batch} x {SHAPE}, classifier-free guidance in one call")
        model_fn = make_guided(module)
        if "ii" in parts:
            recompile_check(model_fn, params, args.batch)
        if "iii" in parts:
            step_overhead(model_fn, params, args.batch, args.rounds)
        if "i" in parts:
            compile_times(model_fn, params, args.compile_batch, args.compile_repeats)
    if "iv" in parts:
        batches = [int(b) for b in args.matrix_batches.split(",")]
        overhead_matrix(batches, args.matrix_rounds)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, loadavg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
