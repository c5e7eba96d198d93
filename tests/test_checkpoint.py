"""Orbax checkpoints: contents, retention, restore onto another device count, corruption."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import jitted, make_batch, max_rel_diff, reference_run, sharded_run

from jaxdiff.training import sharding as sh
from jaxdiff.training.checkpoint import Checkpointer, abstract_like, with_shardings


def _small_state(value: float):
    return {"w": jnp.full((4, 3), value), "step": jnp.int32(value)}


def test_saves_state_data_iterator_and_config(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _small_state(1.0), data_state=b"\x00grain\xff", config={"lr": 1e-3})
        ckpt.save(2, _small_state(2.0), data_state={"position": 7}, config={"dtype": jnp.float32})
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
        first = ckpt.restore(_small_state(0.0), step=1)
        latest = ckpt.restore(_small_state(0.0))
    assert first.data_state == b"\x00grain\xff" and first.config == {"lr": 1e-3}
    np.testing.assert_array_equal(first.state["w"], np.ones((4, 3)))
    assert latest.step == 2 and latest.data_state == {"position": 7}
    assert latest.config == {"dtype": "float32"}
    assert {"config", "data", "state"} <= set(os.listdir(tmp_path / "2"))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        Checkpointer(tmp_path / "other").save(1, _small_state(1.0), data_state=object())


def test_keeps_last_n_and_the_best(tmp_path):
    losses = [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]
    with Checkpointer(tmp_path, max_to_keep=2, keep_best=True, best_metric="loss") as ckpt:
        for step, loss in enumerate(losses, start=1):
            ckpt.save(step, _small_state(step), metrics={"loss": loss})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 5, 6]
    with Checkpointer(tmp_path / "plain", max_to_keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, _small_state(step))
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]


def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path):
    ckpt = Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ckpt.save(step, _small_state(step), data_state={"position": step})
    ckpt.wait()
    for path in glob.glob(str(tmp_path / "3" / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(path) and "manifest" not in path:
            with open(path, "r+b") as f:
                f.truncate(3)
    os.makedirs(tmp_path / "4.orbax-checkpoint-tmp" / "state")  # an unfinished write
    with pytest.warns(UserWarning, match="step 3 .* could not be restored"):
        restored = Checkpointer(tmp_path).restore_latest(_small_state(0.0))
    assert restored.step == 2 and restored.data_state == {"position": 2}
    np.testing.assert_array_equal(restored.state["w"], np.full((4, 3), 2.0))
    assert os.path.isdir(tmp_path / "3.corrupt")
    # Training goes on from step 2 and can write step 3 again.
    ckpt = Checkpointer(tmp_path)
    ckpt.save(3, _small_state(30.0))
    ckpt.wait()
    assert ckpt.restore(_small_state(0.0)).state["step"] == 30
    assert Checkpointer(tmp_path / "empty").restore_latest(_small_state(0.0)) is None


def _damage_arrays(step_dir):
    for path in glob.glob(str(step_dir / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(path) and "manifest" not in path:
            with open(path, "r+b") as f:
                f.truncate(3)


def test_read_only_partial_restore_skips_or_names_a_damaged_step_and_moves_nothing(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2):
            state = {"w": jnp.full((4, 3), step), "opt": jnp.full((5,), 10.0 * step)}
            ckpt.save(step, state, config={"trained_for": step})
    _damage_arrays(tmp_path / "2")
    reader = Checkpointer(tmp_path, read_only=True)
    target = {"w": jax.ShapeDtypeStruct((4, 3), jnp.int32)}

    def read(step):
        return reader.read_config(step), reader.restore_partial(target, step)

    with pytest.warns(UserWarning, match="step 2 .* could not be restored .*; falling back"):
        config, part = reader.newest_readable(read)
    assert config == {"trained_for": 1} and set(part) == {"w"}  # "opt" is not read
    np.testing.assert_array_equal(part["w"], np.ones((4, 3)))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing moved or deleted
    with pytest.raises(ValueError, match="step 2 .* could not be read .*other steps: 1") as e:
        reader.read_step(2, read)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="No checkpoint at step 5 .*steps: 1, 2"):
        reader.read_step(5, read)
    with pytest.raises(ValueError, match="read-only"):
        reader.save(3, {"w": jnp.zeros((4, 3))})
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        Checkpointer(tmp_path / "missing", read_only=True)


def test_checkpoint_from_8_devices_restores_on_1_and_training_continues(tmp_path):
    state8, shardings8 = sharded_run(4, 3, 16)  # 3 steps on a 2 x 4 (data, fsdp) mesh
    assert any("fsdp" in s.spec for s in jax.tree.leaves(shardings8))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state8)

    init_fn, step = jitted()
    abstract = jax.eval_shape(init_fn, jax.random.key(1))
    mesh1 = sh.make_mesh(devices=jax.devices()[:1])
    target = with_shardings(abstract, sh.state_shardings(abstract, mesh1))
    restored = Checkpointer(tmp_path).restore_latest(target)
    state1 = restored.state
    assert restored.step == 3 and {x.sharding.num_devices for x in jax.tree.leaves(state1)} == {1}
    assert max_rel_diff(jax.device_get(state1), jax.device_get(state8)) == 0.0
    assert (
        abstract_like(state1).params["Conv_0"]["kernel"].sharding
        == target.params["Conv_0"]["kernel"].sharding
    )
    state1 = jax.device_put(state1, jax.devices()[0])
    state1, _ = step(state1, make_batch(3, 16), jax.random.key(0))
    assert int(state1.step) == 4
    assert max_rel_diff(jax.device_get(state1), reference_run(4, 16)) <= 1e-5
