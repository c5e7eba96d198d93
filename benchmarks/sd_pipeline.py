"""Images/s and compile time of an SD-1.5-sized text-to-image pipeline: jaxdiff against
diffusers' PyTorch StableDiffusionPipeline, same random weights, interleaved.

The pipeline has Stable Diffusion 1.5's architecture (U-Net 860M parameters: channels 320 /
640 / 1280 / 1280, cross-attention 768; CLIP ViT-L/14 text encoder 123M; KL VAE 84M) with
random weights (torch's initialisation, seed 0), the tiny CLIP tokenizer of the test fixtures
(nothing is downloaded; the text encoder's compute is that of the real one) and
DPM-Solver++ (2M) with SD 1.5's schedule; classifier-free guidance 7.5. diffusers builds and
saves it once (``--dir``, about 4.3 GB of float32 safetensors); jaxdiff loads that directory
(``jaxdiff.pipelines.load_pipeline``), so both hold the same weights and get the same initial
latents (the images are compared: max |jaxdiff - diffusers|).

Per (steps, batch): jaxdiff's first call (compile + run) and diffusers' first call, then
``--rounds`` timed calls of each, alternating which goes first; reported are medians,
images/s = batch / median call time (text encoding, sampling and VAE decoding included),
jaxdiff's compile time = first call - median call, and the ratio torch / jaxdiff (> 1:
jaxdiff is faster). ``--rounds 0`` halves the cost of a full-size run: one call each,
jaxdiff's program compiled ahead of time (``lower().compile()``, timed as its compile
column) so that its call is a steady one. Both use ``--threads`` threads
(torch.set_num_threads; XLA's CPU client uses one intra-op thread per core, or one with
--threads 1).

The issue's configuration is 512 x 512 (latents 64 x 64), 50 and 25 steps, batch 1 and 4:
``--size 512 --steps 50 25 --batch 1 4``. On the 2-core development CPU a 512 x 512 image
takes many minutes per framework, so the default is scaled down to what finishes in minutes
on a quiet machine: 64 x 64 images (latents 8 x 8: the full-width U-Net down to 1 x 1),
10 and 5 steps, batch 1 and 4, two rounds. Run in the reference environment (torch, diffusers,
and jax / flax), from the repository root::

    /work/refenv/bin/python benchmarks/sd_pipeline.py                 # CPU, scaled down
    /work/refenv/bin/python benchmarks/sd_pipeline.py --threads 1     # less skewed when shared
    /work/refenv/bin/python benchmarks/sd_pipeline.py --size 512 --steps 50 25 --batch 1 4
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "text", "tokenizers", "clip")
PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor of a lighthouse",
           "a red fox in the snow", "a bowl of ramen, studio lighting"]  # fmt: skip
UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           sample_size=512)  # fmt: skip
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            eos_token_id=2)  # fmt: skip
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, algorithm_type="dpmsolver++", solver_order=2)  # fmt: skip


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="image height and width")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 5])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--rounds", type=int, default=2,
                   help="timed calls after the first; 0: time the first calls, jaxdiff's "
                   "compiled ahead of time and timed apart")  # fmt: skip
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dir", default="/tmp/jaxdiff_sd15_random", help="pipeline directory")
    p.add_argument("--rebuild", action="store_true", help="rebuild the directory")
    return p.parse_args()


def _build(path: str) -> None:
    """Save a random SD-1.5-sized diffusers pipeline into ``path``."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel(**UNET), vae=diffusers.AutoencoderKL(**VAE),
        text_encoder=transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(TOKENIZER),
        scheduler=diffusers.DPMSolverMultistepScheduler(**SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    shutil.rmtree(path, ignore_errors=True)
    pipe.save_pretrained(path)


def _cpu_time() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _runners(args, path: str, steps: int, batch: int):
    """(jaxdiff call, diffusers call): each returns images [B, H, W, 3] in [0, 1]."""
    import jax
    import torch
    from diffusers import StableDiffusionPipeline

    from jaxdiff import pipelines

    global _PIPES
    if "_PIPES" not in globals():
        theirs = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
        theirs.set_progress_bar_config(disable=True)
        _PIPES = (pipelines.load_pipeline(path, devices=jax.devices()[:1]), theirs)
    ours, theirs = _PIPES
    f = ours.models.vae.downsampling_factor
    shape = (batch, args.size // f, args.size // f, 4)
    latents = np.random.default_rng(batch).standard_normal(shape, dtype=np.float32)
    prompts = (PROMPTS * batch)[:batch]
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, height=args.size, width=args.size)

    def run_jax():
        return ours(prompts, **kw, latents=latents)

    def run_torch():
        with torch.no_grad():
            t = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy())
            return theirs(prompts, **kw, latents=t, output_type="np").images

    return run_jax, run_torch


_COMPILED: list[float] = []  # seconds of each ahead-of-time compile (--rounds 0)
_COMPILED_AHEAD: list[bool] = []


def _compile_ahead(program) -> None:
    """Make ``program.generate`` compile each new program ahead of time (``lower().compile()``,
    timed apart) before running it; the call then reuses that executable."""
    import jax

    generate, seen, backend = program.generate, set(), []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: (
            backend.append(secs) if name.endswith("backend_compile_duration") else None
        )
    )

    def wrapped(prog, *args):
        key = (prog, str(jax.tree.map(lambda a: (a.shape, a.dtype), args)))
        if key not in seen:
            seen.add(key)
            t0 = time.perf_counter()
            generate.lower(prog, *args).compile()
            _COMPILED.append(time.perf_counter() - t0)
        backend.clear()
        out = jax.block_until_ready(generate(prog, *args))
        if backend:  # the call compiled again: its time is not a steady call's
            print(f"warning: the call after the ahead-of-time compile compiled again "
                  f"({sum(backend):.1f} s)", flush=True)  # fmt: skip
        return out

    program.generate = wrapped


def _measure(run_jax, run_torch, rounds: int) -> dict:
    out = {}
    for name, run in (("jax", run_jax), ("torch", run_torch)):
        _COMPILED.clear()
        t0 = time.perf_counter()
        out[name + "_image"] = run()
        out[name + "_first"] = time.perf_counter() - t0
        out[name + "_compile"] = sum(_COMPILED)
    if rounds == 0:  # one call each: jaxdiff's run is its first call less the compile
        out["jax"] = out["jax_first"] - out["jax_compile"]
        out["torch"], out["share"] = out["torch_first"], float("nan")
        return out
    times = {"jax": [], "torch": []}
    runs = {"jax": run_jax, "torch": run_torch}
    wall0, cpu0 = time.perf_counter(), _cpu_time()
    for r in range(rounds):
        for name in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    out["share"] = (_cpu_time() - cpu0) / ((time.perf_counter() - wall0) * os.cpu_count())
    out.update({k: float(np.median(v)) for k, v in times.items()})
    return out


def main() -> None:
    args = _parse()
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    sys.path.insert(0, ROOT)
    sys.modules["torchvision"] = None  # a mismatched torchvision breaks diffusers' imports
    import jax
    import torch

    torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
          f"on {jax.devices()[0].platform}, cpus {os.cpu_count()}, {args.size}x{args.size}, "
          f"load {open('/proc/loadavg').read().split()[:3]}")  # fmt: skip
    if args.rebuild or not os.path.isfile(os.path.join(args.dir, "model_index.json")):
        t0 = time.perf_counter()
        _build(args.dir)
        print(f"built {args.dir} in {time.perf_counter() - t0:.0f} s")
    rows = []
    for steps in args.steps:
        for batch in args.batch:
            run_jax, run_torch = _runners(args, args.dir, steps, batch)
            if args.rounds == 0 and not _COMPILED_AHEAD:
                from jaxdiff.pipelines import program

                _compile_ahead(program)
                _COMPILED_AHEAD.append(True)
            m = _measure(run_jax, run_torch, args.rounds)
            diff = float(np.abs(m["jax_image"] - m["torch_image"]).max())
            row = (
                f"| {steps} | {batch} | {batch / m['jax']:.4f} ({m['jax'] / batch:.0f} s) | "
                f"{batch / m['torch']:.4f} ({m['torch'] / batch:.0f} s) | "
                f"{m['torch'] / m['jax']:.2f} | {m['jax_first'] - m['jax']:.1f} | "
                f"{m['torch_first'] - m['torch']:.1f} | {diff:.1e} | {m['share']:.0%} |"
            )
            if args.rounds == 0:  # no separate warm-up or CPU share in a single call
                row = row.replace(f"| {m['torch_first'] - m['torch']:.1f} |", "| - |", 1)
                row = row.replace("| nan% |", "| - |")
            rows.append(row)
            print(row, flush=True)
    print(
        "\n| steps | batch | jaxdiff img/s (s/img) | diffusers img/s (s/img) | torch/jaxdiff "
        "| jaxdiff compile s | torch warm-up s | max abs diff | CPU share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
