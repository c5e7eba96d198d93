"""Shared pieces of the training tests and their subprocess scripts: a tiny denoiser, a
deterministic checkpointable data iterator and a builder for a small train step."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.training import (
    ema_decay_schedule,
    make_diffusion_loss_fn,
    make_init_fn,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)

# Test programs are tiny: LLVM's optimisation passes cost several times more compile time
# than they save at run time (3-4x faster compiles measured on the 2-core CPU).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


class TinyDenoiser(nn.Module):
    """Two convolutions with time and class embeddings; U-Net calling convention."""

    features: int = 16
    num_classes: int = NUM_CLASSES
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, t, labels=None, context=None, train=False):
        freqs = jnp.exp(-jnp.arange(4, dtype=jnp.float32))
        angles = t.astype(jnp.float32)[:, None] * freqs[None]
        temb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(x.dtype)
        h = nn.Conv(self.features, (3, 3))(x)
        h = h + nn.Dense(self.features)(temb)[:, None, None, :]
        if labels is not None:
            h = h + nn.Embed(self.num_classes + 1, self.features)(labels)[:, None, None, :]
        if context is not None:
            h = h + nn.Dense(self.features)(context.mean(axis=1))[:, None, None, :]
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        return nn.Conv(x.shape[-1], (3, 3))(h)


def init_params(model: nn.Module, key: jax.Array):
    x = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.float32), labels=jnp.zeros((1,), jnp.int32))[
        "params"
    ]


CAPTIONS = ("a small 5 in the top right", "a 3 to the left of a seven", "a two above a 2", "")


def make_batch(seed: int, batch_size: int, text: bool = False) -> dict[str, np.ndarray]:
    """Random images with labels, or (``text``) with the token ids of random captions."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (batch_size, *IMAGE_SHAPE)).astype(np.float32)
    if text:
        captions = [CAPTIONS[i] for i in rng.integers(0, len(CAPTIONS), batch_size)]
        return {"image": image, "input_ids": word_tokenizer()(captions)}
    return {"image": image, "label": rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32)}


def word_tokenizer():
    from jaxdiff.text import WordTokenizer

    return WordTokenizer.from_captions(CAPTIONS)


class CountingIterator:
    """Deterministic batches indexed by position, with grain-style get_state/set_state."""

    def __init__(self, batch_size: int, seed: int = 0, text: bool = False):
        self.batch_size = batch_size
        self.seed = seed
        self.position = 0
        self.text = text

    def __iter__(self):
        return self

    def __next__(self):
        batch = make_batch(self.seed * 100_003 + self.position, self.batch_size, self.text)
        self.position += 1
        return batch

    def get_state(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
        self.seed = int(state["seed"])


def build(
    *,
    features: int = 16,
    grad_accum_steps: int = 1,
    axis_name: str | None = None,
    compute_dtype=None,
    cond_drop_prob: float = 0.1,
    learning_rate: float = 1e-2,
    text: bool = False,
):
    """(init_fn, train_step) of a tiny class-conditional denoiser with AdamW + EMA; with
    ``text``, conditioned on captions through a small text encoder trained with it."""
    model = TinyDenoiser(features=features)
    null = {"null_label": NUM_CLASSES}
    if text:
        from jaxdiff.models.small_text import SmallTextEncoder
        from jaxdiff.training import text_conditioning as tc

        tok = word_tokenizer()
        encoder = SmallTextEncoder(tok.vocab_size, tok.max_length, width=8, num_heads=2)
        model = tc.TextConditionedModel(
            TinyDenoiser(features=features, num_classes=0), tc.TrainedTextEncoder(encoder, tok)
        )
        null = {"null_conditions": model.null_conditions()}
    lr = make_lr_schedule(learning_rate=learning_rate, warmup_steps=2)
    optimizer = make_optimizer(learning_rate=lr, weight_decay=1e-4, grad_clip_norm=1.0)
    loss_fn = make_diffusion_loss_fn(
        model.apply,
        schedule=schedules.make_schedule("linear", num_train_timesteps=1000),
        cond_drop_prob=cond_drop_prob,
        compute_dtype=compute_dtype,
        **null,
    )
    step = make_train_step(
        loss_fn,
        optimizer,
        ema_decay_fn=ema_decay_schedule(decay=0.99),
        grad_accum_steps=grad_accum_steps,
        axis_name=axis_name,
        learning_rate_fn=lr,
    )
    if text:
        x = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
        init = lambda k: model.init({"params": k}, x, jnp.zeros((1,)))["params"]  # noqa: E731
        return make_init_fn(init, optimizer), step
    return make_init_fn(lambda k: init_params(model, k), optimizer), step


@functools.cache
def jitted(**options):
    """``build(**options)`` with both functions jitted, cached so tests share compilations."""
    init_fn, step = build(**options)
    return (
        jax.jit(init_fn, compiler_options=FAST_COMPILE),
        jax.jit(step, compiler_options=FAST_COMPILE),
    )


@functools.cache
def reference_run(num_steps: int, batch_size: int):
    """State after ``num_steps`` steps of :func:`build` on one device (host copy, cached)."""
    device = jax.devices()[0]
    init_fn, step = jitted()
    state = jax.device_put(init_fn(jax.random.key(1)), device)
    for i in range(num_steps):
        batch = jax.device_put(make_batch(i, batch_size), device)
        state, _ = step(state, batch, jax.random.key(0))
    return jax.device_get(state)


@functools.cache
def sharded_run(fsdp: int, num_steps: int, batch_size: int):
    """(state, shardings) after ``num_steps`` steps of :func:`build` jitted on all devices with
    a (data, fsdp) mesh, every array with a divisible dimension FSDP-split (cached)."""
    from jaxdiff.training import sharding as sh

    mesh = sh.make_mesh(fsdp=fsdp)
    init_fn, step = build()
    kw = {"compiler_options": FAST_COMPILE}
    state, shardings = sh.init_sharded_state(
        init_fn, jax.random.key(1), mesh, min_fsdp_size=1, **kw
    )
    step = sh.jit_train_step(step, mesh, shardings, **kw)
    for i in range(num_steps):
        state, _ = step(state, sh.global_batch(make_batch(i, batch_size), mesh), jax.random.key(0))
    return state, shardings


def max_rel_diff(a, b) -> float:
    """Largest |a - b| / max|b| over the leaves of two pytrees."""
    diffs = jax.tree.map(
        lambda x, y: (
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            / max(float(np.max(np.abs(np.asarray(y)))), 1e-30)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))
