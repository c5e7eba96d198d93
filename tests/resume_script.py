"""A tiny checkpointed training run, used as a subprocess by the resume and SIGTERM tests.

    python tests/resume_script.py WORKDIR NUM_STEPS [--kill-during-save-at STEP]
        [--step-delay SECONDS] [--out FINAL.npz] [--text]

Runs ``train_loop`` on 2 fake CPU devices (data-sharded), saving every 3 steps (async), and
prints one line per event (``resumed N``, ``step N``, ``done N``). ``--kill-during-save-at``
makes the process SIGKILL itself right after the asynchronous save of that step has started,
i.e. while the checkpoint is being written. ``--text`` trains a caption-conditioned denoiser
with a small text encoder in the train state instead of the class-conditional one.
"""

import argparse
import os
import signal
import sys

# Tiny programs: LLVM optimisation costs more compile time than it saves at run time.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from training_helpers import CountingIterator, build  # noqa: E402

from jaxdiff.training import Checkpointer, train_loop  # noqa: E402
from jaxdiff.training import sharding as sh  # noqa: E402


class KillingCheckpointer(Checkpointer):
    """Dies by SIGKILL right after starting the asynchronous write of one step."""

    def __init__(self, directory, kill_step, **kwargs):
        super().__init__(directory, **kwargs)
        self.kill_step = kill_step

    def save(self, step, state, **kwargs):
        super().save(step, state, **kwargs)
        if step == self.kill_step:
            print(f"killing during save {step}: {sorted(os.listdir(self.directory))}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("num_steps", type=int)
    parser.add_argument("--kill-during-save-at", type=int, default=None)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--text", action="store_true")
    args = parser.parse_args()
    if cache := os.environ.get("RESUME_TEST_COMPILATION_CACHE"):
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    mesh = sh.make_mesh()
    init_fn, step_fn = build(text=args.text)
    state, shardings = sh.init_sharded_state(init_fn, jax.random.key(1), mesh)
    directory = os.path.join(args.workdir, "checkpoints")
    ckpt = KillingCheckpointer(directory, args.kill_during_save_at, max_to_keep=2)
    print(f"resumed {ckpt.latest_step() or 0}", flush=True)

    def on_step(step):
        print(f"step {step}", flush=True)
        if args.step_delay:
            import time

            time.sleep(args.step_delay)

    data = CountingIterator(batch_size=8, seed=3, text=args.text)
    result = train_loop(
        sh.jit_train_step(step_fn, mesh, shardings),
        state,
        data,
        num_steps=args.num_steps,
        key=jax.random.key(42),
        checkpointer=ckpt,
        save_every=3,
        log_every=2,
        put_batch=lambda b: sh.global_batch(b, mesh),
        on_step=on_step,
        config={"num_steps": args.num_steps},
    )
    ckpt.close()
    if args.out:
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(result.state))[0]
        arrays = {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}
        np.savez(args.out, data_position=data.position, **arrays)
    print(f"{'preempted' if result.preempted else 'done'} {result.step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
