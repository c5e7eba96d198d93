"""Cold vs warm start: what the persistent compilation cache saves train.py and sample.py.

Runs each command as a new process twice with the same, initially empty cache directory
(``$JAXDIFF_CACHE_DIR``): the first run compiles and fills the cache, the second reads it.
Training starts a new workdir each time (a run of ``--steps`` steps with its checkpoint and
sample grid: time to the first steps, not to the end of a run); sampling draws from the
first run's workdir. Prints each process's wall time (imports, data, compilation, work).

    python benchmarks/compile_cache.py                     # configs/default.py, ~2 min
    python benchmarks/compile_cache.py --config configs/text2img.py --steps 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--steps", type=int, default=2, help="training steps per run")
    p.add_argument("--num_samples", type=int, default=64)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "JAXDIFF_CACHE_DIR": os.path.join(tmp, "cache")}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        rows = []
        for label in ("cold", "warm"):
            work = os.path.join(tmp, f"work_{label}")  # a new run each time: step 0 again
            train = [sys.executable, "train.py", f"--config={args.config}",
                     f"--workdir={work}", f"--config.train.num_steps={args.steps}",
                     f"--config.train.save_every={args.steps}", "--config.train.progress=False",
                     f"--config.train.sample_every={args.steps}",
                     f"--config.train.log_every={args.steps}"]  # fmt: skip
            rows.append((f"train.py, {args.steps} steps + sample grid", label, timed(train, env)))
        work = os.path.join(tmp, "work_cold")
        for label in ("cold", "warm"):
            if label == "cold":  # the sampler program of sample.py's flags is not cached yet
                env["JAXDIFF_CACHE_DIR"] = os.path.join(tmp, "cache_sample")
            n = args.num_samples
            sample = [sys.executable, "sample.py", f"--workdir={work}", "--sampler=dpm_solver",
                      "--num_steps=20", f"--num_samples={n}", f"--batch_size={n}",
                      f"--out={os.path.join(tmp, 'out')}"]  # fmt: skip
            rows.append((f"sample.py, {n} images, dpm_solver x20", label, timed(sample, env)))
    print(f"\n{args.config}, load average {os.getloadavg()[0]:.1f} at the end")
    print("| command | cache | wall s |\n| --- | --- | --- |")
    for name, label, seconds in rows:
        print(f"| {name} | {label} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
