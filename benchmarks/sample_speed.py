"""End-to-end sampling throughput: sample.py's path against diffusers (PyTorch), side by side.

jaxdiff: ``experiment.sampling.Generator.sample`` (what sample.py runs: per-sample keys and
noise, labels, batches of ``--batch``). PyTorch: the same U-Net exported to diffusers format
(``export_diffusers_unet``) and loaded by diffusers' ``UNet2DModel``, driven by diffusers'
DDIM / DPM-Solver++ schedulers in the usual pipeline loop under ``torch.inference_mode``, in
a worker process of a separate environment (torch is never a jaxdiff dependency). Both use
the same number of threads; rounds alternate between the two (the other side idles), and
the table shows medians.

    python benchmarks/sample_speed.py --torch-python /work/refenv/bin/python
    python benchmarks/sample_speed.py --torch-python ... --workdir workdirs/default --images 512

Without ``--workdir`` the DIGITS U-Net has random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

WORKER = textwrap.dedent(
    """
    import json, sys, time
    sys.modules["torchvision"] = None  # a torchvision that does not match torch breaks imports
    import torch, diffusers
    torch.set_num_threads(int(sys.argv[2]))
    unet = diffusers.UNet2DModel.from_pretrained(sys.argv[1]).eval()
    def scheduler(name):
        common = dict(num_train_timesteps=1000, beta_schedule="linear")
        if name == "ddim":
            return diffusers.DDIMScheduler(**common, clip_sample=True)
        return diffusers.DPMSolverMultistepScheduler(**common, timestep_spacing="trailing")
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sched = scheduler(req["sampler"])
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, req["images"], req["batch"]):
                n = min(req["batch"], req["images"] - first)
                sched.set_timesteps(req["steps"])
                x = torch.randn((n, *req["shape"]), generator=gen)
                y = torch.arange(first, first + n) % req["classes"]
                for t in sched.timesteps:
                    out = unet(x, t, class_labels=y).sample
                    x = sched.step(out, t, x).prev_sample
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    """
)
# jaxdiff's options that give diffusers' scheduler configs above.
JAX_OPTIONS = {"ddim": {}, "dpm_solver": {"timestep_spacing": "trailing"}}
TORCH_NAME = {"ddim": "ddim", "dpm_solver": "dpmsolver++"}


def build_generator(workdir: str | None):
    """(Generator, module, params) of the workdir or of the DIGITS preset (random weights)."""
    import jax
    import jax.numpy as jnp

    import jaxdiff
    from jaxdiff import models
    from jaxdiff.experiment.sampling import Generator
    from jaxdiff.experiment.workdir import load_workdir

    if workdir:
        gen = load_workdir(workdir)
        return gen, gen.model, gen.params
    module = models.DIGITS(dropout=0.0)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
    params = module.init(jax.random.key(0), x, t, labels=jnp.zeros((1,), jnp.int32))["params"]
    gen = Generator(
        module, params, jaxdiff.make_schedule("linear"), objective="diffusion",
        prediction_type="epsilon", sigma_data=0.5, image_shape=(8, 8, 1),
    )  # fmt: skip
    return gen, module, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", required=True, help="a Python with torch+diffusers")
    parser.add_argument("--workdir", default=None, help="a trained jaxdiff workdir")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="sample.py's --batch_size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cpu-flags", action="store_true", help="skip jaxdiff's XLA CPU flags")
    args = parser.parse_args()

    from jaxdiff import runtime

    # What sample.py does first: the verified XLA CPU flags (the compilation cache does not
    # change steady-state speed; it is left off so every run compiles the same way).
    chosen = runtime.configure(compilation_cache=False, cpu_flags=not args.no_cpu_flags)
    from jaxdiff import models

    gen, module, params = build_generator(args.workdir)
    export = tempfile.mkdtemp(prefix="jaxdiff-sample-speed-")
    models.export_diffusers_unet(module, params, export)
    worker = subprocess.Popen(
        [args.torch_python, "-c", WORKER, export, str(args.threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout.readline().strip() == "ready"

    def torch_run(sampler, steps):
        req = dict(sampler=TORCH_NAME[sampler], steps=steps, images=args.images,
                   batch=args.batch, shape=[gen.image_shape[-1], *gen.image_shape[:2]],
                   classes=max(gen.num_classes, 1))  # fmt: skip
        worker.stdin.write(json.dumps(req) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())["seconds"]

    def jax_run(sampler, steps):
        start = time.perf_counter()
        gen.sample(num_samples=args.images, sampler=sampler, num_steps=steps,
                   batch_size=args.batch, options=JAX_OPTIONS[sampler], progress=False)  # fmt: skip
        return time.perf_counter() - start

    print(f"{args.images} images, batch {args.batch}, {args.threads} threads, "
          f"{'trained ' + args.workdir if args.workdir else 'DIGITS U-Net, random weights'}; "
          f"loadavg {os.getloadavg()[0]:.1f}; "
          f"XLA_FLAGS {chosen.get('XLA_FLAGS', '(none)')!r}")  # fmt: skip
    print("| sampler | steps | jaxdiff images/s | diffusers images/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for sampler in ("dpm_solver", "ddim"):
        for steps in (20, 50):
            jax_run(sampler, steps)  # compile and warm up
            torch_run(sampler, steps)
            j, t = [], []
            for _ in range(args.rounds):
                j.append(jax_run(sampler, steps))
                t.append(torch_run(sampler, steps))
            jr, tr = args.images / statistics.median(j), args.images / statistics.median(t)
            print(f"| {sampler} | {steps} | {jr:.0f} | {tr:.0f} | {jr / tr:.2f} |", flush=True)
    worker.stdin.close()
    worker.wait()
    print(f"loadavg at end {os.getloadavg()[0]:.1f}")
    sys.exit(0)


if __name__ == "__main__":
    main()
