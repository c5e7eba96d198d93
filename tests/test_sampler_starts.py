"""Custom grids and partial trajectories beyond the diffusers parity fixtures: samplers that
diffusers gives no custom grid (DDIM, UniPC, DEIS), the EDM sampler, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import samplers
from jaxdiff.samplers import grids
from jaxdiff.schedules import EDMSchedule, make_schedule

SCHEDULE = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
SHAPE = (3, 4, 4, 2)


def eps_model(x, t):
    return jnp.tanh(0.5 * x) * (0.8 + 0.2 * jnp.cos(t[:, None, None, None] / 300.0))


def run(sampler, noise, **kw):
    return np.asarray(jaxdiff.sample(eps_model, noise, schedule=SCHEDULE, sampler=sampler, **kw))


@pytest.mark.parametrize(
    "sampler, options",
    [
        ("ddim", {"timestep_spacing": "leading"}),
        ("ddpm", {"timestep_spacing": "trailing"}),
        ("dpm_solver", {"solver_order": 3}),
        ("unipc", {"solver_order": 3}),
        ("lcm", {}),
        ("heun", {"timestep_spacing": "leading"}),
        ("euler", {"timestep_spacing": "trailing"}),
    ],
)
def test_custom_timesteps_equal_to_the_default_grid_reproduce_it(sampler, options):
    n = 4 if sampler == "lcm" else 9
    loop = samplers.SamplingLoop(sampler, schedule=SCHEDULE, num_steps=n, **options)
    grid = loop.timesteps if sampler != "heun" else loop.timesteps[0::2]
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    key = jax.random.key(1)
    ref = run(sampler, noise, num_steps=n, key=key, **options)
    custom = [int(t) for t in grid]
    got = run(sampler, noise, timesteps=custom, key=key, **options)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_ddim_custom_grid_steps_to_the_next_point():
    """DDIM, eq. 12 on a custom grid: s is the next grid point, alpha_s = 1 after the last."""
    ts = [999, 700, 420, 100]
    ac = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    x = np.asarray(noise, np.float64)
    for t, s in zip(ts, [*ts[1:], None], strict=True):
        eps = np.asarray(eps_model(jnp.asarray(x, jnp.float32), jnp.full((SHAPE[0],), t)))
        x0 = np.clip((x - np.sqrt(1 - ac[t]) * eps) / np.sqrt(ac[t]), -1, 1)
        a_s = 1.0 if s is None else ac[s]
        x = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) * eps
    got = run("ddim", noise, timesteps=ts)
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "edm"])
def test_a_start_part_way_continues_a_deterministic_run(sampler):
    """One-step samplers keep no history: starting at step k from the full run's state after
    step k's predecessor reproduces the rest of the full run."""
    schedule = EDMSchedule() if sampler == "edm" else SCHEDULE
    kw = {"prediction_type": "sample"} if sampler == "edm" else {}
    n, k = 8, 3
    model = (lambda x, t: jnp.tanh(x)) if sampler == "edm" else eps_model
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    full = samplers.SamplingLoop(sampler, schedule=schedule, num_steps=n, **kw)
    _, traj = full.run(model, noise, return_trajectory=True)
    calls_before = 2 * k if sampler in ("heun", "edm") else k
    x_k = traj["x"][calls_before - 1]  # the state entering step k
    part = samplers.SamplingLoop(sampler, schedule=schedule, num_steps=n, start_step=k, **kw)
    # The sampler's own state: the variance-exploding x for sigma-space samplers; the start
    # point argument is variance preserving (x_vp = x alpha).
    alpha, _ = part.sampler.alpha_sigma_start
    start = x_k * alpha if sampler in ("euler", "heun", "edm") else x_k
    np.testing.assert_allclose(part.run(model, start), full.run(model, noise), rtol=2e-5, atol=2e-5)
    assert part.num_model_calls == full.num_model_calls - calls_before


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "unipc", "deis", "euler", "pndm"])
def test_add_noise_is_the_variance_preserving_q_sample_at_the_start(sampler):
    opts = {"skip_prk_steps": True} if sampler == "pndm" else {}
    loop = samplers.SamplingLoop(sampler, schedule=SCHEDULE, num_steps=10, start_step=4, **opts)
    alpha, sigma = loop.sampler.alpha_sigma_start
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    t0 = loop.timesteps[0]
    if sampler in ("ddim", "dpm_solver", "unipc", "deis", "pndm"):  # integer grids
        np.testing.assert_allclose(alpha, np.sqrt(SCHEDULE.alphas_cumprod[int(t0)]), rtol=1e-5)
    x0, eps = jnp.ones((1, 2)), jnp.full((1, 2), 2.0)
    np.testing.assert_allclose(loop.add_noise(x0, eps), alpha + 2.0 * sigma, rtol=1e-6)


def test_edm_rho_and_range_come_from_the_schedule():
    sched = EDMSchedule(sigma_min=0.01, sigma_max=20.0, rho=3.0)
    loop = samplers.SamplingLoop("edm", schedule=sched, num_steps=6, prediction_type="sample")
    np.testing.assert_allclose(loop.sigmas[:-1], grids.karras_sigmas(0.01, 20.0, 6, 3.0), 1e-6)
    other = samplers.SamplingLoop(
        "edm", schedule=sched, num_steps=6, prediction_type="sample", rho=7.0, sigma_max=10.0
    )
    np.testing.assert_allclose(other.sigmas[:-1], grids.karras_sigmas(0.01, 10.0, 6, 7.0), 1e-6)


def test_start_step_and_grids_compile_once():
    before = samplers.driver._run_scan._cache_size()
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    for seed in range(3):
        run("dpm_solver", noise + seed, num_steps=10, start_step=4, timestep_spacing="trailing")
    assert samplers.driver._run_scan._cache_size() - before == 1


def test_dpm_solver_zero_length_final_step_is_clean():
    # Karras grid with a final sigma_min: the last step has h = 0; no 0/0 (RuntimeWarnings
    # are errors in this suite) and x is left as it is.
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    kw = dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", lower_order_final=False)
    out = run("dpm_solver", noise, num_steps=8, solver_order=3, **kw)
    loop = samplers.SamplingLoop("dpm_solver", schedule=SCHEDULE, num_steps=8, **kw)
    assert loop.sigmas[-1] == loop.sigmas[-2] and np.all(np.isfinite(out))
    _, traj = loop.run(eps_model, noise, return_trajectory=True)
    np.testing.assert_array_equal(traj["x"][-1], traj["x"][-2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="ddim", start_step=10), r"start_step must be in \[0, num_steps=10\)"),
        (dict(sampler="ddim", start_step=-1), r"start_step must be in"),
        (dict(sampler="ddim", start_step=1.5), "start_step must be a Python int"),
        (dict(sampler="pndm", start_step=2), "Runge-Kutta warm-up cannot start part-way"),
        (dict(sampler="ddim", timesteps=[900, 950]), "strictly decreasing"),
        (dict(sampler="euler", sigmas=[2.0, 3.0, 0.0]), "strictly decreasing"),
        (dict(sampler="euler", timesteps=[900, 100], sigmas=[2.0, 0.0]), "at most one of"),
        (dict(sampler="dpm_solver", timesteps=[900, 100], num_steps=3), "disagrees with the 2"),
        (dict(sampler="ddim", sigmas=[2.0, 0.0]), "'sigmas' does not apply to sampler 'ddim'"),
        (
            dict(sampler="dpm_solver", use_karras_sigmas=True, use_lu_lambdas=True),
            "at most one of use_karras_sigmas and use_lu_lambdas",
        ),
        (dict(sampler="deis", algorithm_type="dpmsolver++"), "Unknown algorithm_type"),
        (dict(sampler="lcm", num_steps=60), "needs at least as many LCM grid points"),
    ],
)
def test_bad_grids_and_starts_are_refused_before_compiling(kwargs, match):
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    args = dict(schedule=SCHEDULE, num_steps=10)
    args.update(kwargs)
    if "timesteps" in kwargs or "sigmas" in kwargs:
        args["num_steps"] = kwargs.get("num_steps")
    with pytest.raises(ValueError, match=match):
        jaxdiff.sample(model, jnp.zeros(SHAPE), **args)
    assert not calls


def test_single_step_lcm_is_deterministic():
    loop = samplers.SamplingLoop("lcm", schedule=SCHEDULE, num_steps=1)
    assert not loop.stochastic and loop.timesteps.tolist() == [999.0]
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    np.testing.assert_allclose(run("lcm", noise, num_steps=1), run("lcm", noise, num_steps=1))
