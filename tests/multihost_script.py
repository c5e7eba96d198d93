"""One of two processes (4 fake CPU devices each) of a multi-host run on 127.0.0.1.

    python tests/multihost_script.py PROCESS_ID PORT OUT_DIR CKPT_IN CKPT_OUT

Joins ``jax.distributed`` as process PROCESS_ID of 2, then on the global 8-device mesh:
1. runs 3 train steps, each process feeding its half of the global batch, and (process 0)
   writes the resulting state to OUT_DIR/trained.npz;
2. restores the checkpoint in CKPT_IN (written by one process on 8 devices) with FSDP
   shardings and writes it to OUT_DIR/restored.npz;
3. saves the trained state with per-process data-iterator states to CKPT_OUT.
"""

import os
import sys

# Tiny programs: LLVM optimisation costs more compile time than it saves at run time.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from training_helpers import build, make_batch  # noqa: E402

from jaxdiff.training import Checkpointer, with_shardings  # noqa: E402
from jaxdiff.training import sharding as sh  # noqa: E402

NUM_STEPS, GLOBAL_BATCH = 3, 16


def _write(tree, path):
    full = multihost_utils.process_allgather(tree, tiled=True)
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_flatten_with_path(full)[0]
        np.savez(path, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})


def main() -> None:
    process_id, port, out_dir, ckpt_in, ckpt_out = sys.argv[1:6]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id)
    )
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = sh.make_mesh(fsdp=2)
    init_fn, step_fn = build()
    state, shardings = sh.init_sharded_state(init_fn, jax.random.key(1), mesh, min_fsdp_size=1)
    step = sh.jit_train_step(step_fn, mesh, shardings)
    rows = slice(jax.process_index() * 8, (jax.process_index() + 1) * 8)
    for i in range(NUM_STEPS):
        local = jax.tree.map(lambda x: x[rows], make_batch(i, GLOBAL_BATCH))
        state, _ = step(state, sh.global_batch(local, mesh), jax.random.key(0))
    _write(state, os.path.join(out_dir, "trained.npz"))

    abstract = with_shardings(jax.eval_shape(init_fn, jax.random.key(1)), shardings)
    restored = Checkpointer(ckpt_in).restore_latest(abstract)
    _write(restored.state, os.path.join(out_dir, "restored.npz"))

    with Checkpointer(ckpt_out) as ckpt:
        ckpt.save(NUM_STEPS, state, data_state={"process": jax.process_index()})
    print(f"process {jax.process_index()} ok", flush=True)


if __name__ == "__main__":
    main()
