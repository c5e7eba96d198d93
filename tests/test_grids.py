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
