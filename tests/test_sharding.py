"""jit + NamedSharding (data, FSDP) and pmap give the numbers of one device; FSDP memory."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from training_helpers import (
    FAST_COMPILE,
    build,
    make_batch,
    max_rel_diff,
    reference_run,
    sharded_run,
)

from jaxdiff.training import sharding as sh

NUM_STEPS, BATCH = 3, 16


def test_fsdp_spec_picks_largest_divisible_dim():
    assert sh.fsdp_spec((3, 3, 16, 64), 8, min_size=1) == P(None, None, None, "fsdp")
    assert sh.fsdp_spec((3, 3, 64, 12), 8, min_size=1) == P(None, None, "fsdp", None)
    assert sh.fsdp_spec((12, 10), 8, min_size=1) == P()
    assert sh.fsdp_spec((64,), 8, min_size=1000) == P()
    assert sh.fsdp_spec((64, 64), 1, min_size=1) == P()
    with pytest.raises(ValueError, match="divide the number of devices"):
        sh.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="numeric arrays only"):
        sh.global_batch({"caption": np.array(["a digit"] * 8)}, sh.make_mesh())


def _per_device_bytes(tree) -> int:
    """Bytes that device 0 holds for a pytree of (sharded) arrays."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = next(s for s in x.addressable_shards if s.device == jax.devices()[0])
        total += int(np.prod(shard.data.shape)) * x.dtype.itemsize
    return total


def test_fsdp_divides_per_device_parameter_memory_by_eight():
    init_fn, _ = build(features=64)
    key = jax.random.key(0)
    # min_fsdp_size=1: at this tiny size every array with a dimension divisible by 8 is split.
    kw = {"min_fsdp_size": 1, "compiler_options": FAST_COMPILE}
    repl_state, _ = sh.init_sharded_state(init_fn, key, sh.make_mesh(fsdp=1), **kw)
    fsdp_state, _ = sh.init_sharded_state(init_fn, key, sh.make_mesh(fsdp=8), **kw)
    for part in ("params", "ema_params", "opt_state"):
        full = _per_device_bytes(getattr(repl_state, part))
        ratio = _per_device_bytes(getattr(fsdp_state, part)) / full
        assert 1 / 8 <= ratio < 1 / 8 * 1.02, (part, ratio)
    kernel = fsdp_state.params["Conv_1"]["kernel"]  # [3, 3, 64, 1]: split over its 64 inputs
    assert kernel.shape == (3, 3, 64, 1)
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 8, 1)}
    np.testing.assert_array_equal(
        fsdp_state.params["Conv_1"]["kernel"], repl_state.params["Conv_1"]["kernel"]
    )


@pytest.mark.parametrize("fsdp", [1, 4])
def test_sharded_jit_matches_one_device(fsdp):
    """fsdp=1: batch split 8 ways, parameters replicated; fsdp=4: a 2 x 4 (data, fsdp) mesh."""
    want = reference_run(NUM_STEPS, BATCH)
    got, shardings = sharded_run(fsdp, NUM_STEPS, BATCH)
    specs = {s.spec for s in jax.tree.leaves(shardings)}
    assert any("fsdp" in spec for spec in specs) == (fsdp > 1)
    assert {x.sharding.num_devices for x in jax.tree.leaves(got)} == {8}
    assert max_rel_diff(jax.device_get(got), want) <= 1e-5


def test_pmap_matches_one_device():
    want = reference_run(NUM_STEPS, BATCH)
    init_fn, step = build(axis_name=sh.PMAP_AXIS)
    state = sh.replicate(jax.jit(init_fn, compiler_options=FAST_COMPILE)(jax.random.key(1)))
    batches = [sh.split_for_pmap(make_batch(i, BATCH)) for i in range(NUM_STEPS)]
    key = jax.random.key(0)
    step = sh.pmap_train_step(step).lower(state, batches[0], key).compile(FAST_COMPILE)
    for batch in batches:
        state, metrics = step(state, batch, key)
    assert max_rel_diff(jax.device_get(sh.unreplicate(state)), want) <= 1e-5
    np.testing.assert_allclose(metrics["loss"][0], metrics["loss"][7])
