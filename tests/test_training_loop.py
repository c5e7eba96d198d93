"""train_loop: callbacks, in-process resume, NaN stop with the last checkpoint intact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.training import (
    Checkpointer,
    NonFiniteLossError,
    create_train_state,
    ema_decay_schedule,
    make_optimizer,
    make_train_step,
    train_loop,
)


def _loss(params, batch, example_keys, batch_key):
    noise = jax.vmap(lambda k: jax.random.normal(k, ()))(example_keys)
    per_example = jnp.sum((params["w"][None] - batch["x"]) ** 2, axis=1) * (1 + 0.1 * noise)
    return per_example * (1.0 + batch["poison"]), {}


class Batches:
    """Batch n is a function of n; from ``poison_from`` on the loss is NaN."""

    def __init__(self, poison_from=None):
        self.position, self.poison_from = 0, poison_from

    def __next__(self):
        rng = np.random.default_rng(self.position)
        poisoned = self.poison_from is not None and self.position >= self.poison_from
        self.position += 1
        return {"x": rng.normal(size=(4, 3)), "poison": np.full((4,), np.nan if poisoned else 0.0)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _setup():
    tx = make_optimizer(learning_rate=0.05)
    step = make_train_step(_loss, tx, ema_decay_fn=ema_decay_schedule(decay=0.9))
    step = jax.jit(step, compiler_options={"xla_backend_optimization_level": 0})
    return step, create_train_state({"w": jnp.zeros((3,))}, tx)


def test_callbacks_get_window_means_and_resume_continues_exactly(tmp_path):
    step, fresh = _setup()
    seen, dispatched = [], []

    def callback(s, metrics, state):
        seen.append((s, metrics["loss"], int(state.step)))

    key = jax.random.key(0)
    full = train_loop(step, fresh, Batches(), num_steps=6, key=key, log_every=1,
                      callbacks=[callback], on_step=dispatched.append)  # fmt: skip
    per_step = [loss for _, loss, _ in seen]
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6] == dispatched
    assert all(s == st for s, _, st in seen)

    windows = []
    ckpt = Checkpointer(tmp_path, async_save=False)
    first = train_loop(step, _setup()[1], Batches(), num_steps=4, key=key, checkpointer=ckpt,
                       save_every=2, log_every=3,
                       callbacks=[lambda s, m, _: windows.append((s, m["loss"]))])  # fmt: skip
    assert first.step == 4 and ckpt.all_steps() == [2, 4] and not first.preempted
    assert [s for s, _ in windows] == [3, 4]
    np.testing.assert_allclose(windows[0][1], np.mean(per_step[:3]), rtol=1e-6)
    np.testing.assert_allclose(windows[1][1], per_step[3], rtol=1e-6)
    data = Batches()
    resumed = train_loop(step, _setup()[1], data, num_steps=6, key=key, checkpointer=ckpt)
    assert resumed.step == 6 and data.position == 6 and ckpt.all_steps() == [2, 4, 6]
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="without restoring the data iterator"):
        train_loop(step, _setup()[1], iter([]), num_steps=6, key=key, checkpointer=ckpt)


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    step, fresh = _setup()
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 8.*Last good checkpoint: step 6"):
        train_loop(step, fresh, Batches(poison_from=7), num_steps=20, key=jax.random.key(0),
                   checkpointer=ckpt, save_every=3, log_every=5)  # fmt: skip
    assert ckpt.all_steps() == [3, 6]
    restored = Checkpointer(tmp_path).restore_latest(fresh)
    clean = train_loop(step, _setup()[1], Batches(), num_steps=6, key=jax.random.key(0))
    assert restored.step == 6 and restored.data_state == {"position": 6}
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(clean.state), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ran out at step 2"):
        train_loop(step, fresh, iter([next(Batches())] * 2), num_steps=3, key=jax.random.key(0))


def test_progress_counts_completed_steps_a_bounded_distance_behind():
    step, fresh = _setup()
    done = []
    train_loop(step, fresh, Batches(), num_steps=10, key=jax.random.key(0), log_every=100,
               on_step=done.append, max_ahead=2)  # fmt: skip
    # step s is dispatched only after step s - 2 finished; the final log syncs everything
    assert done == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    with pytest.raises(ValueError, match="max_ahead >= 0"):
        train_loop(step, fresh, Batches(), num_steps=1, key=jax.random.key(0), max_ahead=-1)
