"""Input pipeline throughput next to what the default training step consumes.

Measures images/s of `jaxdiff.data.make_pipeline` on
  - the digits default (8x8x1, held in memory), and
  - a 32x32 RGB image folder generated here in a temporary directory, once held in memory
    (the default for a split this small) and once decoded from the array_record files on
    every read (what a large dataset does),
and images/s of the default training step (the DIGITS U-Net, batch 64, AdamW, EMA) alone and
fed by the digits pipeline. A small conv denoiser stands in for the step where the model or
the training engine cannot be built. Runs are interleaved; medians are printed.

    python benchmarks/input_pipeline.py                 # ~2 min on a 2-core CPU
    python benchmarks/input_pipeline.py --repeats 5 --worker-count 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxdiff import data


def _write_folder(root: Path, n: int, seed: int = 0) -> None:
    """n smooth random 32x32 RGB PNGs in 10 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((32, 32), Image.Resampling.BILINEAR)
        path = root / f"class_{i % 10}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def _pipeline_rate(make, batches: int) -> float:
    """Images/s of a fresh pipeline over `batches` batches after 5 warm-up batches."""
    it = make()
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    n = sum(len(next(it)["image"]) for _ in range(batches))
    return n / (time.perf_counter() - start)


def _default_step(batch_size: int):
    """(jitted step, initial state, description) of the default training step."""
    try:
        return _digits_unet_step(batch_size)
    except Exception as error:  # The model or engine is missing or broken in this checkout.
        return _stand_in_step(batch_size, f"stand-in conv denoiser ({type(error).__name__})")


def _digits_unet_step(batch_size: int):
    from jaxdiff import schedules, training
    from jaxdiff.models.presets import DIGITS

    model = DIGITS()
    x = jnp.zeros((batch_size, 8, 8, 1))
    t = jnp.zeros((batch_size,))
    params = model.init(jax.random.key(0), x, t, labels=jnp.zeros((batch_size,), jnp.int32))
    optimizer = training.make_optimizer(learning_rate=1e-3)
    loss_fn = training.make_diffusion_loss_fn(model.apply, schedule=schedules.make_schedule())
    step = training.make_train_step(
        loss_fn, optimizer, ema_decay_fn=training.ema_decay_schedule(decay=0.999)
    )
    state = training.create_train_state(params["params"], optimizer)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    return jax.jit(step, donate_argnums=0), state, f"DIGITS U-Net ({n_params / 1e6:.2f}M params)"


def _stand_in_step(batch_size: int, why: str):
    import flax.linen as nn
    import optax

    class Denoiser(nn.Module):
        @nn.compact
        def __call__(self, x, t, labels):
            h = nn.Conv(64, (3, 3))(x) + nn.Embed(10, 64)(labels)[:, None, None]
            h = h + nn.Dense(64)(jnp.sin(t[:, None] / 100.0))[:, None, None]
            for _ in range(4):
                h = h + nn.Conv(64, (3, 3))(nn.silu(nn.GroupNorm(8)(h)))
            return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))

    model, optimizer = Denoiser(), optax.adamw(1e-3)
    x, t = jnp.zeros((batch_size, 8, 8, 1)), jnp.zeros((batch_size,))
    params = model.init(jax.random.key(0), x, t, jnp.zeros((batch_size,), jnp.int32))

    def step(state, batch, key):
        params, opt_state = state
        k_t, k_n = jax.random.split(jax.random.fold_in(key, 0))
        t = jax.random.uniform(k_t, (batch_size,), maxval=1000.0)
        noise = jax.random.normal(k_n, batch["image"].shape)
        a = jnp.cos(t / 1000.0 * jnp.pi / 2)[:, None, None, None]
        x_t = a * batch["image"] + jnp.sqrt(1 - a**2) * noise

        def loss(p):
            return jnp.mean((model.apply(p, x_t, t, batch["label"]) - noise) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": value}

    return jax.jit(step, donate_argnums=0), (params, optimizer.init(params)), why


def _step_rate(step, state, batches, key) -> tuple[float, object]:
    """Images/s of the step over the given batches (numpy dicts), and the new state."""
    start = time.perf_counter()
    n = 0
    for batch in batches:
        state, metrics = step(state, {k: batch[k] for k in ("image", "label")}, key)
        n += len(batch["image"])
    jax.block_until_ready(metrics)
    return n / (time.perf_counter() - start), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per run")
    parser.add_argument("--steps", type=int, default=20, help="timed train steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder-images", type=int, default=2000)
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--worker-count", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxdiff_bench_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    """Prepares the datasets under `tmp`, measures, prints."""
    _write_folder(tmp / "folder", args.folder_images)
    start = time.perf_counter()
    digits = data.get_builder("digits", data_dir=tmp / "tfds")
    folder = data.get_builder("image_folder", data_dir=tmp / "tfds", path=tmp / "folder")
    print(
        f"prepared digits and a {args.folder_images}-image folder in "
        f"{time.perf_counter() - start:.1f} s"
    )
    common = dict(
        global_batch_size=args.batch_size,
        seed=0,
        random_flip=True,
        read_threads=args.read_threads,
        worker_count=args.worker_count,
    )
    pipelines = {
        "digits 8x8x1 (in memory)": lambda: data.make_pipeline(digits, **common),
        "folder 32x32x3 (in memory)": lambda: data.make_pipeline(
            folder, image_size=32, cache=True, **common
        ),
        "folder 32x32x3 (decoded per read)": lambda: data.make_pipeline(
            folder, image_size=32, cache=False, **common
        ),
    }
    step, state, what = _default_step(args.batch_size)
    key = jax.random.key(0)
    fixed = [next(data.make_pipeline(digits, **common))] * args.steps
    state = _step_rate(step, state, fixed[:3], key)[1]  # compile
    rates: dict[str, list[float]] = {name: [] for name in [*pipelines, "step", "step+input"]}
    for _ in range(args.repeats):
        for name, make in pipelines.items():
            batches = args.batches if "decoded" not in name else args.batches // 4
            rates[name].append(_pipeline_rate(make, batches))
        rate, state = _step_rate(step, state, fixed, key)
        rates["step"].append(rate)
        it = data.make_pipeline(digits, **common)
        rate, state = _step_rate(step, state, (next(it) for _ in range(args.steps)), key)
        rates["step+input"].append(rate)

    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"train step: {what}, batch {args.batch_size}, {jax.devices()[0].platform}")
    print(
        f"read_threads={args.read_threads}, worker_count={args.worker_count}, "
        f"median of {args.repeats} interleaved runs"
    )
    for name, rate in med.items():
        print(f"  {name:36s} {rate:10.0f} images/s")
    print(f"digits input / step consumption: {med['digits 8x8x1 (in memory)'] / med['step']:.1f}x")
    print(
        f"step fed by the pipeline / step on a fixed batch: {med['step+input'] / med['step']:.2f}"
    )


if __name__ == "__main__":
    main()
