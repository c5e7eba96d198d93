"""Inference grids (jaxdiff.samplers.grids) against closed forms; diffusers parity of the
grids is in test_schedules_parity.py."""

import numpy as np
import pytest

from jaxdiff.samplers import grids
from jaxdiff.schedules import make_schedule


def test_inference_timesteps_closed_forms():
    it = grids.timesteps
    np.testing.assert_array_equal(it(1000, 4, "leading"), [750, 500, 250, 0])
    np.testing.assert_array_equal(it(1000, 4, "leading", steps_offset=1), [751, 501, 251, 1])
    np.testing.assert_array_equal(it(1000, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(it(1000, 4, "linspace"), [999, 666, 333, 0])
    for spacing in grids.SPACINGS:
        ts = it(1000, 7, spacing)
        assert ts.shape == (7,) and np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() <= 999


def test_karras_grid():
    g = grids.karras_sigmas(0.002, 80.0, 18)
    np.testing.assert_allclose(g[[0, -1]], [80.0, 0.002], rtol=1e-12)
    np.testing.assert_allclose(np.diff(g ** (1 / 7)), (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17)


def test_sigma_to_t_inverts_the_table():
    s = make_schedule("linear", 1000)
    log_sigmas = np.log(np.asarray(s.karras_sigmas(), np.float64))
    t = grids.sigma_to_t(np.exp(log_sigmas[[0, 10, 999]]), log_sigmas)
    np.testing.assert_allclose(t, [0, 10, 999], atol=1e-9)
    mid = np.exp(0.5 * (log_sigmas[10] + log_sigmas[11]))
    np.testing.assert_allclose(grids.sigma_to_t(np.array([mid]), log_sigmas), [10.5])


def test_bad_spacing_and_step_count():
    with pytest.raises(ValueError, match="'middle'.*allowed: leading, trailing, linspace"):
        grids.timesteps(1000, 10, "middle")
    with pytest.raises(ValueError, match="num_steps must be in"):
        grids.timesteps(1000, 1001, "leading")


def test_custom_timesteps_are_validated():
    np.testing.assert_array_equal(grids.custom_timesteps([999, 500, 3], 1000), [999, 500, 3])
    for bad, match in [
        ([999, 999, 3], "strictly decreasing"),
        ([3, 500], "strictly decreasing"),
        ([1000, 500], r"lie in \[0, 999\]"),
        ([500, -1], r"lie in \[0, 999\]"),
        ([500.5, 3], "integers"),
        ([], "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            grids.custom_timesteps(bad, 1000)


def test_custom_sigmas_are_validated():
    np.testing.assert_allclose(grids.custom_sigmas([3.0, 1.0, 0.0]), [3.0, 1.0, 0.0])
    for bad, match in [
        ([3.0], "at least two points"),
        ([3.0, 3.0, 0.0], "strictly decreasing"),
        ([3.0, 1.0, -0.1], ">= 0"),
        ([np.inf, 1.0, 0.0], "finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            grids.custom_sigmas(bad)


@pytest.mark.parametrize(
    "steps, strength, start", [(50, 0.6, 20), (10, 0.6, 4), (7, 0.6, 3), (10, 1.0, 0), (4, 0.3, 3)]
)
def test_start_step_for_strength_is_diffusers_img2img_rule(steps, strength, start):
    # diffusers: init_timestep = min(int(N * strength), N); t_start = max(N - init_timestep, 0)
    assert grids.start_step_for_strength(steps, strength) == start


def test_bad_strength():
    for strength in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            grids.start_step_for_strength(10, strength)
    with pytest.raises(ValueError, match="leaves no step to run"):
        grids.start_step_for_strength(10, 0.05)


def test_lu_lambda_grid_is_uniform_in_log_sigma():
    s = make_schedule("linear", 1000)
    g = grids.solver_grid(np.asarray(s.alphas_cumprod), 12, use_lu_lambdas=True)
    log_s = np.log(g.sigmas[:-1].astype(np.float64))
    np.testing.assert_allclose(np.diff(log_s), np.diff(log_s)[0], rtol=1e-5)
    table = grids.schedule_sigmas(np.asarray(s.alphas_cumprod))
    np.testing.assert_allclose(g.sigmas[[0, -2]], table[[-1, 0]], rtol=1e-6)
    assert g.sigmas[-1] == 0.0 and np.all(np.diff(g.timesteps) < 0)
