"""CPU training step: one XLA CPU device against data parallelism over several, side by side.

Each configuration runs in its own process (the device count and XLA flags are fixed when
jax starts): the DDPM-style U-Net of benchmarks/unet_speed.py ("unet2d": 32 / 64 / 64
channels, self-attention at the second level), a full jaxdiff train step (forward, backward,
AdamW, EMA) of batch 16 built from the config engine, the batch split over a data-parallel
mesh of ``--devices`` fake CPU devices (``--xla_force_host_platform_device_count``), with and
without jaxdiff's XLA CPU flag (runtime.py) and with one intra-op thread per device
(``--xla_cpu_multi_thread_eigen=false``). Medians of 10 steps after 3 warm-up steps.

    python benchmarks/cpu_data_parallel.py                  # 16 and 32 px, 1 vs 2 devices
    python benchmarks/cpu_data_parallel.py --sizes 32 --devices 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"

WORKER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from jaxdiff import training
from jaxdiff.experiment import base_config, from_config
size, batch = int(sys.argv[2]), int(sys.argv[3])
c = base_config()
c.model.kwargs = dict(channels=(32, 64, 64), num_res_blocks=2, attention_levels=(1,), head_dim=32,
                      norm_groups=32, flip_sin_to_cos=False, freq_shift=1, num_classes=0)
c.data.global_batch_size = batch
shape = (size, size, 3)
model = from_config.build_model(c.model, num_classes=None, image_channels=3)
opt, lr = from_config.build_optimizer(c)
step_fn = from_config.build_train_step(c, model, from_config.build_schedule(c.diffusion), opt, lr)
mesh = training.make_mesh(fsdp=1)
init = training.make_init_fn(from_config.init_params_fn(model, shape), opt)
state, shardings = training.init_sharded_state(init, jax.random.key(0), mesh)
step = training.jit_train_step(step_fn, mesh, shardings)
images = np.random.default_rng(0).uniform(-1, 1, (batch, *shape)).astype(np.float32)
data = training.global_batch({"image": images}, mesh)
key, times = jax.random.key(1), []
for i in range(13):
    start = time.perf_counter()
    state, metrics = step(state, data, key)
    jax.block_until_ready(metrics)
    if i >= 3:
        times.append(time.perf_counter() - start)
print(json.dumps({"ms": 1000 * float(np.median(times)), "devices": jax.device_count()}))
"""


def measure(devices: int, flags: str, size: int, batch: int) -> float:
    """Median step time (ms) in a fresh process with these devices and XLA flags."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {flags}".strip()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    out = subprocess.run([sys.executable, "-c", WORKER, ROOT, str(size), str(batch)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == devices
    return result["ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    variants = {"no flag": "", "XLA CPU flag": YNN, "one thread per device": ONE_THREAD,
                "flag + one thread per device": f"{YNN} {ONE_THREAD}"}  # fmt: skip
    print(f"batch {args.batch}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| size | devices | XLA flags | step (ms) | vs 1 device with the flag |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        base = measure(1, YNN, size, args.batch)
        for n in args.devices:
            for name, flags in variants.items():
                if n == 1 and "per device" in name:
                    continue
                ms = base if (n == 1 and flags == YNN) else measure(n, flags, size, args.batch)
                print(f"| {size} | {n} | {name} | {ms:.1f} | {base / ms:.2f} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
