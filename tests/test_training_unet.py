"""The engine with the library's U-Net (TINY preset): loop, checkpoint, FSDP-sharded restore.

(bfloat16 compute is covered with the small test model in test_training_step.py; on this CPU
XLA compiles the bf16 U-Net 2-3x slower.)"""

import jax
import jax.numpy as jnp
import numpy as np
from training_helpers import FAST_COMPILE, CountingIterator

from jaxdiff import schedules
from jaxdiff.models import TINY
from jaxdiff.training import (
    Checkpointer,
    ema_decay_schedule,
    make_diffusion_loss_fn,
    make_init_fn,
    make_optimizer,
    make_train_step,
    train_loop,
    with_shardings,
)
from jaxdiff.training import sharding as sh


def test_tiny_unet_trains_and_restores_fsdp_sharded(tmp_path):
    model = TINY()
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
    labels = jnp.zeros((1,), jnp.int32)
    optimizer = make_optimizer(learning_rate=1e-3)
    init_fn = make_init_fn(lambda k: model.init(k, x, t, labels=labels)["params"], optimizer)
    loss_fn = make_diffusion_loss_fn(
        model.apply,
        schedule=schedules.make_schedule("linear", num_train_timesteps=1000),
        prediction_type="v_prediction",
        cond_drop_prob=0.2,
        null_label=10,
    )
    step = make_train_step(loss_fn, optimizer, ema_decay_fn=ema_decay_schedule(decay=0.999))
    mesh1 = sh.make_mesh(devices=jax.devices()[:1])
    state, shardings = sh.init_sharded_state(
        init_fn, jax.random.key(0), mesh1, compiler_options=FAST_COMPILE
    )
    seen = []
    ckpt = Checkpointer(tmp_path)
    result = train_loop(
        sh.jit_train_step(step, mesh1, shardings, compiler_options=FAST_COMPILE),
        state,
        TenClasses(CountingIterator(batch_size=8)),
        num_steps=2,
        key=jax.random.key(1),
        checkpointer=ckpt,
        log_every=1,
        callbacks=[lambda s, m, _: seen.append(m["loss"])],
    )
    assert len(seen) == 2 and all(np.isfinite(seen))
    leaves = jax.tree.leaves((result.state.params, result.state.ema_params, result.state.opt_state))
    assert {x.dtype for x in leaves if x.ndim} == {jnp.dtype(jnp.float32)}

    mesh8 = sh.make_mesh(fsdp=8)
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    target = with_shardings(abstract, sh.state_shardings(abstract, mesh8, min_fsdp_size=1024))
    restored = ckpt.restore_latest(target)
    assert restored.step == 2 and restored.data_state == {"position": 2, "seed": 0}
    big = [x for x in jax.tree.leaves(restored.state.params) if x.size >= 1024]
    assert big and all(x.addressable_shards[0].data.size * 8 == x.size for x in big)
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(result.state), strict=True):
        np.testing.assert_array_equal(a, b)


class TenClasses:
    """The counting iterator with labels in [0, 10) for the 10-class preset."""

    def __init__(self, inner):
        self.inner = inner

    def __next__(self):
        batch = next(self.inner)
        return {**batch, "label": (batch["label"] * 3 + 1) % 10}

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)
