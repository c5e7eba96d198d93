"""RK45 against scipy, and bits/dim by the probability-flow ODE and the VLB against closed forms
on Gaussian data, where the optimal denoiser and the exact densities are known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.stats import norm

from jaxdiff.evaluation import dormand_prince, ode_bits_per_dim, vlb_bits_per_dim
from jaxdiff.schedules import VPLinearSchedule, make_schedule

SCHEDULE = make_schedule("linear", 1000)
_A = np.array([[-0.5, 2.0], [-2.0, -0.3]])
ODES = {  # name: (numpy field, jax field, y0, t0, t1)
    "decay": (lambda t, y: -y, lambda t, y: -y, [1.0, 2.0], 0.0, 5.0),
    "rotation": (lambda t, y: _A @ y, lambda t, y: jnp.asarray(_A) @ y, [1.0, 0.0], 0.0, 10.0),
    "van_der_pol": (
        lambda t, y: np.array([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]]),
        lambda t, y: jnp.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]]),
        [2.0, 0.0], 0.0, 8.0,
    ),
    "backwards": (lambda t, y: np.cos(t) * y, lambda t, y: jnp.cos(t) * y, [1.0], 3.0, -1.0),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ODES))
def test_rk45_takes_scipys_steps(name):
    f_np, f_jax, y0, t0, t1 = ODES[name]
    with jax.enable_x64(True):
        for tol in (1e-3, 1e-7):
            ref = solve_ivp(f_np, (t0, t1), np.array(y0), method="RK45", rtol=tol, atol=tol)
            solve = jax.jit(lambda y, tol=tol: dormand_prince(f_jax, y, t0, t1, rtol=tol, atol=tol))
            sol = solve(jnp.asarray(y0, jnp.float64))
            assert int(sol.num_evals) == ref.nfev and int(sol.num_steps) == len(ref.t) - 1
            np.testing.assert_allclose(np.asarray(sol.y), ref.y[:, -1], rtol=1e-12, atol=1e-14)
            assert bool(sol.success)


def test_rk45_per_example_steps_under_vmap():
    """Each example keeps its own step size: a stiff neighbour changes nothing."""
    f = lambda t, y: -y[0] * y  # noqa: E731  (the rate is the first component)
    solve = jax.jit(jax.vmap(lambda y: dormand_prince(f, y, 0.0, 2.0, rtol=1e-6, atol=1e-6)))
    alone = solve(jnp.array([[1.0, 1.0]]))
    both = solve(jnp.array([[1.0, 1.0], [40.0, 1.0]]))
    np.testing.assert_array_equal(np.asarray(both.y[0]), np.asarray(alone.y[0]))
    assert int(both.num_evals[0]) == int(alone.num_evals[0]) < int(both.num_evals[1])
    # y' = -y0 y with y0(t) = 1 / (1 + t): y(t) = y(0) / (1 + t).
    np.testing.assert_allclose(np.asarray(alone.y[0]), [1 / 3, 1 / 3], rtol=2e-5)
    capped = dormand_prince(f, jnp.array([40.0, 1.0]), 0.0, 2.0, rtol=1e-6, atol=1e-6, max_steps=3)
    assert not bool(capped.success)


class Gaussian:
    """Data N(m, S) in D dims (S rotated, so Hutchinson's estimate is not exact), its
    optimal eps-prediction model and the exact log densities."""

    def __init__(self, dim=8, seed=0, stds=(0.2, 0.7), rotate=True):
        rng = np.random.default_rng(seed)
        self.q = np.linalg.qr(rng.standard_normal((dim, dim)))[0] if rotate else np.eye(dim)
        self.var = np.linspace(*stds, dim) ** 2
        self.cov = self.q @ np.diag(self.var) @ self.q.T
        self.mean = rng.uniform(-0.3, 0.3, dim)
        self.rng = rng

    def sample(self, n):
        z = self.rng.standard_normal((n, len(self.var))) * np.sqrt(self.var)
        return (self.mean + z @ self.q.T).astype(np.float32)

    def model_fn(self, schedule):
        cov, mean, dim = jnp.asarray(self.cov), jnp.asarray(self.mean), len(self.var)

        def eps_hat(x_t, t):  # E[eps | x_t] = sigma (alpha^2 S + sigma^2 I)^-1 (x_t - alpha m)
            a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
            c = a[..., None] ** 2 * cov + s[..., None] ** 2 * jnp.eye(dim)
            return s * jnp.linalg.solve(c, (x_t - a * mean)[..., None])[..., 0]

        return eps_hat

    def bpd(self, x):
        """Exact -log N(x; m, S) / (D log 2)."""
        d = x - self.mean
        maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(self.cov), d)
        nll = 0.5 * maha + 0.5 * np.linalg.slogdet(2 * np.pi * self.cov)[1]
        return nll / (len(self.var) * math.log(2))


@pytest.fixture(scope="module")
def gaussian_runs():
    """One Gaussian, 256 samples: the ODE with exact and Hutchinson divergences, the VLB."""
    g = Gaussian()
    x = g.sample(256)
    fn = g.model_fn(SCHEDULE)
    run = jax.jit(lambda x, div, probe: ode_bits_per_dim(fn, x, jax.random.key(3),
                  schedule=SCHEDULE, num_bins=None, divergence=div, probe=probe),
                  static_argnums=(1, 2))  # fmt: skip
    out = {"g": g, "x": x, "exact": run(x, "exact", "rademacher")}
    out["hutchinson"] = run(x, "hutchinson", "rademacher")
    out["gaussian_probe"] = run(x, "hutchinson", "gaussian")
    for variance_type in ("fixed_small", "fixed_large"):
        out[variance_type] = vlb_bits_per_dim(
            fn, x[:64], jax.random.key(1), schedule=SCHEDULE, num_bins=None,
            variance_type=variance_type,
        )  # fmt: skip
    return out


def test_ode_bits_per_dim_equals_the_exact_nll(gaussian_runs):
    out, want = gaussian_runs["exact"], gaussian_runs["g"].bpd(gaussian_runs["x"])
    assert bool(np.all(out.success)) and np.all(np.asarray(out.num_evals) < 400)
    # Per example (the model's density at t = 0 is N(m, S + ~1e-4 I): measured 5e-5 relative).
    np.testing.assert_allclose(np.asarray(out.bpd), want, rtol=2e-3, atol=2e-3)
    assert abs(float(np.mean(out.bpd)) / want.mean() - 1) <= 0.01


def test_hutchinson_divergence_is_unbiased(gaussian_runs):
    exact = np.asarray(gaussian_runs["exact"].bpd, np.float64)
    for probe in ("hutchinson", "gaussian_probe"):
        diff = np.asarray(gaussian_runs[probe].bpd, np.float64) - exact
        assert diff.std() > 1e-3, probe  # the probe is really random here (S is not diagonal)
        assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff)), probe


def test_vlb_bounds_the_ode_nll_from_above(gaussian_runs):
    ode, x = np.asarray(gaussian_runs["exact"].bpd)[:64], gaussian_runs["x"][:64]
    for variance_type in ("fixed_small", "fixed_large"):
        vlb = gaussian_runs[variance_type]
        np.testing.assert_allclose(vlb.bpd, vlb.prior + vlb.denoising + vlb.decoder)
        assert vlb.bpd.mean() > ode.mean() + 0.05, variance_type  # 1.61 / 0.97 vs 0.79 measured
    # The prior term in closed form: KL(N(a x, s^2) || N(0, 1)) per dimension, in bits.
    ac = float(SCHEDULE.alphas_cumprod[-1])
    kl = 0.5 * (ac * x**2 + (1 - ac) - 1 - np.log(1 - ac)).mean(1) / math.log(2)
    np.testing.assert_allclose(vlb.prior, kl, rtol=1e-4, atol=1e-7)


def test_discrete_data_dequantised_and_discretised():
    """17-level data (the digits' grid): the dequantised ODE bound and the VLB with the
    discretised decoder both lie above the exact discrete NLL -log P(bin) of the model."""
    g = Gaussian(seed=3, stds=(0.3, 0.6), rotate=False)  # diagonal: P(bin) is a product
    bins = 17
    width = 2 / (bins - 1)
    x = np.clip(np.round((g.sample(64) + 1) / width) * width - 1, -1, 1).astype(np.float32)
    sd = np.sqrt(g.var)
    upper = np.where(x > 0.999, np.inf, (x + width / 2 - g.mean) / sd)
    lower = np.where(x < -0.999, -np.inf, (x - width / 2 - g.mean) / sd)
    exact = -np.log(norm.cdf(upper) - norm.cdf(lower)).mean(1) / math.log(2)
    ode = jax.jit(lambda x: ode_bits_per_dim(g.model_fn(SCHEDULE), x, jax.random.key(4),
                  schedule=SCHEDULE, num_bins=bins, divergence="exact").bpd)(x)  # fmt: skip
    ode = np.asarray(ode)
    vlb = vlb_bits_per_dim(g.model_fn(SCHEDULE), x, jax.random.key(5), schedule=SCHEDULE,
                           num_bins=bins, variance_type="fixed_large")  # fmt: skip
    assert exact.mean() < ode.mean() < 1.03 * exact.mean()
    assert vlb.bpd.mean() > exact.mean()


def test_continuous_schedule():
    """VP-linear continuous time (t(k) found by bisection of its logSNR)."""
    schedule = VPLinearSchedule()
    g = Gaussian(seed=4)
    x = g.sample(8)
    out = jax.jit(lambda x: ode_bits_per_dim(g.model_fn(schedule), x, jax.random.key(0),
                  schedule=schedule, num_bins=None, divergence="exact"))(x)  # fmt: skip
    np.testing.assert_allclose(np.asarray(out.bpd), g.bpd(x), rtol=2e-3, atol=2e-3)


def test_bad_arguments():
    fn = Gaussian().model_fn(SCHEDULE)
    x = jnp.zeros((2, 8))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="divergence must be one of"):
        ode_bits_per_dim(fn, x, key, schedule=SCHEDULE, divergence="trace")
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2 or None"):
        ode_bits_per_dim(fn, x, key, schedule=SCHEDULE, num_bins=1)
    zsnr = make_schedule("linear", 1000, rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ode_bits_per_dim(fn, x, key, schedule=zsnr)
    with pytest.raises(ValueError, match="must lie in"):
        ode_bits_per_dim(fn, x, key, schedule=SCHEDULE, t_range=(0, 1000))
    with pytest.raises(ValueError, match="needs a DiscreteSchedule"):
        vlb_bits_per_dim(fn, x, key, schedule=VPLinearSchedule())
    with pytest.raises(ValueError, match="variance_type must be one of"):
        vlb_bits_per_dim(fn, x, key, schedule=SCHEDULE, variance_type="learned")
