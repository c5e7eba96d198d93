"""Train step, optimizer, EMA, gradient accumulation, mixed precision and CFG dropout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import (
    FAST_COMPILE,
    NUM_CLASSES,
    TinyDenoiser,
    build,
    init_params,
    jitted,
    make_batch,
    max_rel_diff,
)

from jaxdiff import schedules
from jaxdiff.training import (
    create_train_state,
    ema_decay_schedule,
    ema_update,
    make_diffusion_loss_fn,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)


def test_ema_decay_with_warmup_matches_closed_form():
    fn = jax.jit(ema_decay_schedule(decay=0.999))
    for n in (0, 1, 10, 500, 100_000):
        np.testing.assert_allclose(fn(n), min(0.999, (1 + n) / (10 + n)), rtol=1e-6)
    np.testing.assert_allclose(ema_decay_schedule(decay=0.9, warmup=False)(0), 0.9, rtol=1e-7)


def test_ema_half_life_matches_closed_form():
    batch, half_life, ratio = 64, 10_000.0, 0.05
    fn = jax.jit(ema_decay_schedule(half_life_images=half_life, batch_size=batch))
    for n in (0, 10, 3000, 10_000):
        h = min(half_life, ratio * (n + 1) * batch)
        np.testing.assert_allclose(fn(n), 0.5 ** (batch / h), rtol=1e-5)
    # Without ramp-up, half_life / batch updates halve the weight of the start.
    beta = ema_decay_schedule(half_life_images=half_life, batch_size=batch, rampup_ratio=None)(0)
    np.testing.assert_allclose(float(beta) ** (half_life / batch), 0.5, rtol=1e-5)


def test_ema_update_and_validation():
    out = ema_update({"w": jnp.array([1.0, 3.0])}, {"w": jnp.array([3.0, 7.0])}, 0.75)
    np.testing.assert_allclose(out["w"], [1.5, 4.0])
    with pytest.raises(ValueError, match="exactly one"):
        ema_decay_schedule(decay=0.9, half_life_images=10.0)
    with pytest.raises(ValueError, match="batch_size"):
        ema_decay_schedule(half_life_images=10.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ema_decay_schedule(decay=1.0)


def test_lr_schedules_match_closed_forms():
    const = make_lr_schedule(learning_rate=2e-3, warmup_steps=4)
    np.testing.assert_allclose([const(n) for n in (0, 1, 4, 99)], [0, 5e-4, 2e-3, 2e-3], rtol=1e-6)
    peak, warm, total, frac = 1e-3, 10, 110, 0.1
    cos = make_lr_schedule(
        learning_rate=peak, warmup_steps=warm, decay="cosine", total_steps=total,
        final_lr_fraction=frac,
    )  # fmt: skip
    for n in (5, 10, 35, 60, 110, 200):
        if n < warm:
            want = peak * n / warm
        else:
            frac_done = min(n - warm, total - warm) / (total - warm)
            want = frac * peak + (1 - frac) * peak * 0.5 * (1 + math.cos(math.pi * frac_done))
        np.testing.assert_allclose(cos(n), want, rtol=1e-5)
    with pytest.raises(ValueError, match="total_steps"):
        make_lr_schedule(learning_rate=1e-3, decay="cosine")
    with pytest.raises(ValueError, match="allowed"):
        make_lr_schedule(learning_rate=1e-3, decay="linear")


def _numpy_adamw(params, grads_seq, *, lr, wd, clip, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW (Loshchilov & Hutter) with global-norm clipping; decay on ndim > 1 only."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
        scale = min(1.0, clip / norm)
        for k in p:
            gk = g[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk**2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if p[k].ndim > 1:
                u = u + wd * p[k]
            p[k] = p[k] - lr * u
    return p


def test_optimizer_matches_numpy_adamw_with_clipping():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "bias": np.ones(4, np.float32)}
    grads_seq = [
        {k: (rng.normal(size=x.shape) * s).astype(np.float32) for k, x in params.items()}
        for s in (0.1, 5.0, 0.3)
    ]
    tx = make_optimizer(learning_rate=1e-2, weight_decay=0.1, grad_clip_norm=1.0)
    p, opt_state = jax.tree.map(jnp.asarray, params), tx.init(params)
    for g in grads_seq:
        updates, opt_state = tx.update(g, opt_state, p)
        p = jax.tree.map(lambda a, b: a + b, p, updates)
    want = _numpy_adamw(params, grads_seq, lr=1e-2, wd=0.1, clip=1.0)
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-7)


def _quadratic_loss(params, batch, example_keys, batch_key):
    del batch_key
    noise = jax.vmap(lambda k: jax.random.normal(k, ()))(example_keys)
    per_example = jnp.sum((params["w"][None] - batch["x"]) ** 2, axis=1) * (1 + 0.1 * noise)
    return per_example, {"noise": noise}


def test_step_applies_optimizer_ema_and_fold_in_rng():
    tx = make_optimizer(learning_rate=0.1, grad_clip_norm=None)
    step_fn = jax.jit(
        make_train_step(_quadratic_loss, tx, ema_decay_fn=ema_decay_schedule(decay=0.5)),
        compiler_options=FAST_COMPILE,
    )
    state = create_train_state({"w": jnp.array([1.0, -2.0])}, tx)
    batch = {"x": jnp.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])}
    key = jax.random.key(7)
    state = state.replace(step=jnp.int32(5))
    new_state, metrics = step_fn(state, batch, key)

    k_ex, _ = jax.random.split(jax.random.fold_in(key, 5))
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(k_ex, i), ()) for i in range(3)])
    w = np.array([1.0, -2.0])
    x = np.asarray(batch["x"])
    grad = np.mean(2 * (w[None] - x) * (1 + 0.1 * np.asarray(noise))[:, None], axis=0)
    updates, _ = tx.update({"w": jnp.asarray(grad)}, tx.init({"w": w}), {"w": w})
    want_w = w + np.asarray(updates["w"])
    np.testing.assert_allclose(new_state.params["w"], want_w, rtol=1e-6)
    decay = min(0.5, 6 / 15)
    np.testing.assert_allclose(new_state.ema_params["w"], decay * w + (1 - decay) * want_w, 1e-6)
    np.testing.assert_allclose(metrics["noise"], np.mean(noise), rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-6)
    assert int(new_state.step) == 6


def test_grad_accumulation_equals_one_big_batch():
    init_fn, step1 = jitted()
    _, step_k = jitted(grad_accum_steps=4)
    key = jax.random.key(0)
    s1 = sk = init_fn(jax.random.key(1))
    for i in range(3):
        batch = make_batch(i, 16)
        s1, m1 = step1(s1, batch, key)
        sk, mk = step_k(sk, batch, key)
    assert max_rel_diff(sk, s1) <= 1e-5
    np.testing.assert_allclose(mk["loss"], m1["loss"], rtol=1e-5)


def test_mixed_precision_keeps_float32_state():
    init_fn, step_bf16 = jitted(compute_dtype=jnp.bfloat16)
    _, step_f32 = jitted()
    state = init_fn(jax.random.key(1))
    batch, key = make_batch(0, 16), jax.random.key(3)
    out_bf16, m_bf16 = step_bf16(state, batch, key)
    out_f32, m_f32 = step_f32(state, batch, key)
    dtypes = {x.dtype for x in jax.tree.leaves((out_bf16.params, out_bf16.ema_params))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(out_bf16.opt_state) if x.ndim} == {jnp.dtype("f4")}
    # The forward really ran in bfloat16: close to, but not equal to, the float32 loss.
    assert float(m_bf16["loss"]) != float(m_f32["loss"])
    np.testing.assert_allclose(m_bf16["loss"], m_f32["loss"], rtol=5e-2)
    jaxpr = jax.make_jaxpr(build(compute_dtype=jnp.bfloat16)[1])(state, batch, key)
    assert "conv_general_dilated" in str(jaxpr) and "bf16[16,8,8" in str(jaxpr)


def _condition_probe(variables, x, t, labels=None, context=None, train=False, rngs=None):
    """A fake model whose output reveals whether the condition was dropped."""
    dropped = (labels == NUM_CLASSES).astype(jnp.float32)
    ctx = jnp.mean(context, axis=(1, 2))
    return jnp.ones_like(x) * (dropped + 10.0 * ctx)[:, None, None, None]


def test_cfg_condition_dropout_per_example():
    loss_fn = make_diffusion_loss_fn(
        _condition_probe,
        schedule=schedules.make_schedule("linear", num_train_timesteps=1000),
        prediction_type="sample",
        cond_drop_prob=0.3,
        null_label=NUM_CLASSES,
    )
    n = 4000
    batch = {
        "image": jnp.zeros((n, 1, 1, 1)),
        "label": jnp.zeros((n,), jnp.int32),
        "context": jnp.ones((n, 2, 3)),
    }
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), jnp.arange(n))
    loss_fn = jax.jit(loss_fn, compiler_options=FAST_COMPILE)
    loss, _ = loss_fn({}, batch, keys, keys[0])
    # target x0 = 0: loss = output^2 = 1 if dropped (label null, context 0), 100 if kept.
    values = set(np.unique(np.asarray(loss)).tolist())
    assert values == {1.0, 100.0}
    frac = float(np.mean(np.asarray(loss) == 1.0))
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    # Per-example keys decide: the same keys in another order give the same drops.
    perm = np.random.default_rng(0).permutation(n)
    loss_perm, _ = loss_fn({}, jax.tree.map(lambda a: a[perm], batch), keys[perm], keys[0])
    np.testing.assert_array_equal(loss_perm, np.asarray(loss)[perm])


def test_step_and_objective_validate_arguments():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        make_train_step(_quadratic_loss, make_optimizer(learning_rate=1e-3), grad_accum_steps=0)
    init_fn, step = build(grad_accum_steps=3)
    state = jax.eval_shape(init_fn, jax.random.key(1))
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        jax.eval_shape(step, state, make_batch(0, 16), jax.random.key(0))
    sched = schedules.make_schedule("linear", num_train_timesteps=10)
    with pytest.raises(ValueError, match="allowed"):
        make_diffusion_loss_fn(TinyDenoiser().apply, schedule=sched, weighting="nope")
    loss_fn = make_diffusion_loss_fn(TinyDenoiser().apply, schedule=sched, cond_drop_prob=0.5)
    params = jax.eval_shape(lambda k: init_params(TinyDenoiser(), k), jax.random.key(0))
    keys = jax.random.split(jax.random.key(0), 4)
    with pytest.raises(ValueError, match="null_label"):
        jax.eval_shape(loss_fn, params, make_batch(0, 4), keys, keys[0])


def _zero_model(variables, x, t, labels=None, context=None, train=False, rngs=None):
    return jnp.zeros_like(x)


def test_objectives_match_closed_forms_for_a_zero_model():
    """With F = 0: epsilon loss = mean(n^2); EDM loss = lambda(s) mean((c_skip (x0 + s n) - x0)^2),
    with t / sigma and n drawn from each example's key split in 3 (times, noise, dropout)."""
    n, shape = 6, (2, 2, 1)
    fast = {"compiler_options": FAST_COMPILE}
    x0 = np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(np.float32)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(3), jnp.arange(n))
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)  # [n, 3]: times, noise, dropout
    noise = np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape))(parts[:, 1]), np.float64)
    linear = schedules.make_schedule("linear", num_train_timesteps=1000)
    eps_loss, _ = make_diffusion_loss_fn(_zero_model, schedule=linear)(
        {}, {"image": x0}, keys, keys[0]
    )
    np.testing.assert_allclose(eps_loss, np.mean(noise**2, axis=(1, 2, 3)), rtol=1e-5)

    edm = schedules.EDMSchedule()
    log_sigma = -1.2 + 1.2 * jax.vmap(lambda k: jax.random.normal(k, (1,))[0])(parts[:, 0])
    sigma = np.exp(np.asarray(log_sigma, np.float64))
    edm_fn = jax.jit(make_diffusion_loss_fn(_zero_model, schedule=edm, objective="edm"), **fast)
    edm_loss, _ = edm_fn({}, {"image": x0}, keys, keys[0])
    s = sigma[:, None, None, None]
    c_skip = 0.25 / (s**2 + 0.25)
    want = (s**2 + 0.25) / (s**2 * 0.25) * (c_skip * (x0 + s * noise) - x0) ** 2
    np.testing.assert_allclose(edm_loss, np.mean(want, axis=(1, 2, 3)), rtol=1e-5)
