"""Two processes x 4 devices through jax.distributed on 127.0.0.1 (subprocesses with a
timeout): the same numbers as one device, and checkpoints that move between 1x8 and 2x4."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from training_helpers import build, max_rel_diff, reference_run

from jaxdiff.training import Checkpointer, with_shardings
from jaxdiff.training import sharding as sh

SCRIPT = os.path.join(os.path.dirname(__file__), "multihost_script.py")
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_dict(tree):
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    reference = reference_run(3, 16)
    init_fn, _ = build()
    mesh8 = sh.make_mesh(fsdp=8)
    shardings = sh.state_shardings(
        jax.eval_shape(init_fn, jax.random.key(1)), mesh8, min_fsdp_size=1
    )
    with Checkpointer(root / "ckpt_1x8") as ckpt:
        ckpt.save(3, jax.device_put(reference, shardings), data_state={"position": 3})
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(SCRIPT)), env.get("PYTHONPATH", "")]
    )
    port = _free_port()
    args = [str(root), str(root / "ckpt_1x8"), str(root / "ckpt_2x4")]
    procs = [
        subprocess.Popen([sys.executable, SCRIPT, str(i), str(port), *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0 and f"process {i} ok" in out, out[-3000:]
    return root, reference


def test_two_processes_match_one_device(two_process_run):
    root, reference = two_process_run
    got = dict(np.load(root / "trained.npz"))
    assert max_rel_diff(got, _as_dict(reference)) <= 1e-5


def test_checkpoint_moves_between_1x8_and_2x4(two_process_run):
    root, reference = two_process_run
    restored = dict(np.load(root / "restored.npz"))
    assert max_rel_diff(restored, _as_dict(reference)) == 0.0
    # Saved by 2 processes: each one's iterator state is kept; one process restores the arrays.
    with open(root / "ckpt_2x4" / "3" / "data" / "metadata") as f:
        data = json.load(f)
    assert data["process_count"] == 2
    assert data["processes"] == {"0": {"json": {"process": 0}}, "1": {"json": {"process": 1}}}
    init_fn, _ = build()
    abstract = jax.eval_shape(init_fn, jax.random.key(1))
    target = with_shardings(abstract, sh.state_shardings(abstract, sh.make_mesh()))
    with pytest.warns(UserWarning, match="data-iterator states of 2 processes"):
        back = Checkpointer(root / "ckpt_2x4").restore_latest(target)
    assert back.data_state is None
    trained = dict(np.load(root / "trained.npz"))
    assert max_rel_diff(_as_dict(back.state), trained) == 0.0
