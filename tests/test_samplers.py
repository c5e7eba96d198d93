"""Sampler behaviour beyond parity: compile once, keys, precision, step API, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import samplers
from jaxdiff.schedules import EDMSchedule, make_schedule

SCHEDULE = make_schedule("linear", 1000)
SHAPE = (4, 3, 3, 2)


def eps_model(x, t):
    return jnp.tanh(0.5 * x) * (0.8 + 0.2 * jnp.cos(t[:, None, None, None] / 300.0))


def test_compile_once_for_new_scale_seed_eta_and_noise():
    traces = []

    def guided_model(x, t, scale):
        traces.append(1)
        return eps_model(x, t) * (1.0 + 0.01 * scale[:, None, None, None])

    @jax.jit
    def generate(noise, key, scale, eta):
        return jaxdiff.sample(
            guided_model,
            noise,
            schedule=SCHEDULE,
            sampler="ddim",
            num_steps=7,
            key=key,
            cond={"scale": scale},
            eta=eta,
        )

    noise = jax.random.normal(jax.random.key(0), SHAPE)
    outs = []
    for i, (scale, eta) in enumerate([(1.0, 0.0), (3.0, 0.5), (7.5, 1.0)]):
        s = jnp.full((SHAPE[0],), scale)
        outs.append(generate(noise * (1 + i), jax.random.key(i), s, jnp.float32(eta)))
    assert generate._cache_size() == 1
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])


def test_eager_calls_reuse_the_compiled_loop():
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    before = samplers.driver._run_scan._cache_size()
    for seed in range(3):
        jaxdiff.sample(
            eps_model,
            noise + seed,
            schedule=SCHEDULE,
            sampler="dpm_solver",
            num_steps=9,
            key=jax.random.key(seed),
        )
    assert samplers.driver._run_scan._cache_size() - before == 1


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral", "dpm_solver", "edm"])
def test_per_sample_keys_make_images_independent_of_the_batch(sampler):
    opts = {"algorithm_type": "sde-dpmsolver++"} if sampler == "dpm_solver" else {}
    opts = {"S_churn": 10.0} if sampler == "edm" else opts
    keys = jax.random.split(jax.random.key(42), 4)
    noise = jax.random.normal(jax.random.key(1), SHAPE)
    full = jaxdiff.sample(
        eps_model, noise, schedule=SCHEDULE, sampler=sampler, num_steps=6, key=keys, **opts
    )
    part = jaxdiff.sample(
        eps_model, noise[2:], schedule=SCHEDULE, sampler=sampler, num_steps=6, key=keys[2:], **opts
    )
    np.testing.assert_allclose(full[2:], part, rtol=1e-5, atol=1e-6)
    other = jaxdiff.sample(
        eps_model,
        noise,
        schedule=SCHEDULE,
        sampler=sampler,
        num_steps=6,
        key=jax.random.split(jax.random.key(7), 4),
        **opts,
    )
    assert not np.allclose(full, other)


def test_compile_time_does_not_grow_with_steps():
    """The loop is a scan: its program does not grow with num_steps."""

    def hlo_ops(n):
        f = jax.jit(
            lambda z: jaxdiff.sample(eps_model, z, schedule=SCHEDULE, sampler="ddim", num_steps=n)
        )
        text = f.lower(jnp.zeros(SHAPE)).as_text()
        # One operation per line; the per-step tables are constants (one line each).
        return len(text.splitlines()), text.count("stablehlo.while")

    ops_10, ops_1000 = hlo_ops(10), hlo_ops(1000)
    assert ops_10 == ops_1000 and ops_10[1] == 1


@pytest.mark.parametrize("sampler, steps", [("ddpm", 1000), ("dpm_solver", 50)])
def test_bf16_model_matches_float32_to_bf16_accuracy(sampler, steps):
    noise = jax.random.normal(jax.random.key(3), SHAPE)

    def bf16_model(x, t):
        return eps_model(x.astype(jnp.bfloat16), t.astype(jnp.bfloat16)).astype(jnp.bfloat16)

    key = jax.random.key(5)
    ref = jaxdiff.sample(
        eps_model, noise, schedule=SCHEDULE, sampler=sampler, num_steps=steps, key=key
    )
    low = jaxdiff.sample(
        bf16_model, noise, schedule=SCHEDULE, sampler=sampler, num_steps=steps, key=key
    )
    assert low.dtype == jnp.float32 and np.all(np.isfinite(low))
    # bf16 has 8 bits of mantissa (rel. 4e-3 per call); errors partly average out.
    assert np.abs(np.asarray(low) - np.asarray(ref)).max() < 0.05 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("spacing, steps", [("trailing", 3), ("linspace", 4), ("linspace", 25)])
def test_euler_ancestral_is_finite_when_sigma_max_dwarfs_the_next_sigma(spacing, steps):
    # Cosine betas start at sigma ~2e4 and the next grid point is ~1: diffusers' float32
    # sqrt(s_to^2 - s_up^2) is sqrt(<0) = NaN there (NaN images); the exact value is s_to^2/s_from.
    sched = make_schedule("squaredcos_cap_v2")
    loop = samplers.SamplingLoop(
        "euler_ancestral", schedule=sched, num_steps=steps, timestep_spacing=spacing
    )
    tables = loop.sampler.tables
    s_from, s_up, s_down = (
        np.asarray(v, np.float64) for v in (tables.sigma, tables.sigma_up, tables.sigma_down)
    )
    s_to = np.append(s_from[1:], 0.0)
    np.testing.assert_allclose(s_down, s_to**2 / s_from, rtol=1e-6)
    np.testing.assert_allclose(s_up**2 + s_down**2, s_to**2, rtol=1e-6)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    out = jaxdiff.sample(
        eps_model, noise, schedule=sched, sampler="euler_ancestral", num_steps=steps,
        key=jax.random.key(1), timestep_spacing=spacing,
    )  # fmt: skip
    assert np.all(np.isfinite(out))


def test_step_level_api_equals_the_scan():
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    key = jax.random.key(1)
    loop = samplers.SamplingLoop("ddpm", schedule=SCHEDULE, num_steps=8)
    state = loop.init(noise)
    for k in range(loop.num_model_calls):
        state, x_in, t = loop.model_input(state, k, key=key)
        state = loop.step(state, k, eps_model(x_in, t), key=key)
    manual = loop.result(state)
    scanned = jaxdiff.sample(
        eps_model, noise, schedule=SCHEDULE, sampler="ddpm", num_steps=8, key=key
    )
    np.testing.assert_allclose(manual, scanned, rtol=1e-5, atol=1e-6)
    assert loop.timesteps.shape == (8,) and loop.stochastic


def test_edm_schedule_model_with_vmap():
    sched = EDMSchedule()

    def denoiser(x, sigma):  # "sample" prediction from the VP input
        return jnp.tanh(x)

    noise = jax.random.normal(jax.random.key(0), (3, 2, *SHAPE[1:]))
    out = jax.vmap(
        lambda z: jaxdiff.sample(
            denoiser, z, schedule=sched, sampler="edm", num_steps=5, prediction_type="sample"
        )
    )(noise)
    assert out.shape == noise.shape and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="ddim2"), "Unknown sampler 'ddim2'; available: ddim, ddpm"),
        (dict(sampler="ddim", etaa=0.1), "Unknown option 'etaa' for sampler 'ddim'"),
        (dict(sampler="euler", eta=0.1), "'eta' does not apply to sampler 'euler'.*ddim"),
        (dict(sampler="ddim", num_steps=0), r"num_steps must be in \[1, num_train_timesteps"),
        (dict(sampler="ddim", num_steps=1001), "got 1001"),
        (dict(sampler="ddim", num_steps=2.5), "must be a Python int"),
        (
            dict(sampler="dpm_solver", algorithm_type="dpmsolver"),
            "final_sigmas_type='zero' needs a data-prediction solver",
        ),
        (dict(sampler="dpm_solver", solver_order=4), "solver_order must be 1, 2 or 3"),
        (dict(sampler="unipc", solver_type="bh3"), "Unknown solver_type 'bh3'"),
        (dict(sampler="ddim", timestep_spacing="middle"), "Unknown timestep_spacing 'middle'"),
        (dict(sampler="ddpm", variance_type="learned"), "Unknown variance_type 'learned'"),
        (dict(sampler="ddim", prediction_type="x0"), "Unknown prediction_type 'x0'"),
        (dict(sampler="euler_ancestral", prediction_type="sample"), "not supported by sampler"),
        (dict(sampler="ddpm"), "stochastic: pass key="),
        (dict(sampler="dpm_solver", num_steps=1000), "repeated timesteps"),
        (dict(sampler="unipc", num_steps=1000, solver_order=3), "repeated timesteps"),
        (dict(sampler="edm", schedule=make_schedule("linear"), num_steps=1), "num_steps >= 2"),
        (
            dict(
                sampler="pndm",
                schedule=make_schedule("scaled_linear", rescale_betas_zero_snr=True),
                timestep_spacing="trailing",
            ),
            r"pndm divides by sqrt\(alphas_cumprod\[t\]\), which is 0 at timestep\(s\) \[999\]",
        ),
        (
            dict(sampler="euler", schedule=EDMSchedule()),
            "needs a schedule of type DiscreteSchedule",
        ),
    ],
)
def test_bad_input_is_refused_before_compiling(kwargs, match):
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    args = dict(schedule=SCHEDULE, num_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        jaxdiff.sample(model, jnp.zeros(SHAPE), **args)
    assert not calls


def test_bad_key_shape():
    with pytest.raises(ValueError, match="one PRNG key or one per sample"):
        jaxdiff.sample(
            eps_model,
            jnp.zeros(SHAPE),
            schedule=SCHEDULE,
            sampler="ddpm",
            num_steps=3,
            key=jax.random.split(jax.random.key(0), 3),
        )
