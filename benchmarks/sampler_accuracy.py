"""Exact accuracy of every sampler against closed-form denoisers of known targets.

Each sampler is driven by the exact epsilon-prediction E[eps | x_t] of a target whose law
is known, on the discrete "linear" schedule (betas 1e-4..0.02, T = 1000), so the only error
left is the sampler's own discretisation (plus the truncation of the forward process at
t = 999, printed as a floor):

a) a single Gaussian N(mu, diag(s^2)) in 4 dims. A deterministic sampler is then an affine
   map of x_T, so its output law is exactly Gaussian; it is read off, with no Monte Carlo,
   from runs on x_T = 0 and on the unit vectors (one batch). A stochastic sampler is affine
   in (x_T, its per-call noises): unit vectors fed through ``step_noise=`` give its exact
   covariance. Printed: W2 and KL(sampler law || target), in total and per dimension.
b) a 10-component full-covariance Gaussian mixture fitted to scikit-learn's digits (64 dims,
   scaled like the data pipeline: x / 8 - 1). Printed: the Frechet distance of 2000 samples
   to 2000 true mixture samples, its floor (true vs true), and for deterministic samplers
   the RMS distance to a converged reference solution from the same x_T.

Orders of convergence are slopes of log(error) vs log(NFE) over NFE >= 20, measured against
the sampler's own limit (the exact probability-flow ODE or reverse-SDE law from x_T ~ N(0, I)
at t = 999 in (a), the reference solution in (b)), so the truncation floor does not bend them.
Section (a') isolates three effects of the time grids that set those orders.

Sampler options: x_0 clipping off (it would make the maps non-affine); "trailing" spacing for
ddim/ddpm/pndm and set_alpha_to_one=True for pndm, so that every grid runs from t = 999 to
x_0; ddim and pndm only at step counts dividing T = 1000 (they step to t - T // N); the
mixture's covariances are floored at the digits' dequantisation variance (1/8)^2 / 12;
diffusers' defaults otherwise. Fractional model times are mapped back to sigma with the
sampler's own convention: linear in sigma for euler/euler_ancestral/heun (diffusers'
interpolation of their grids), linear in log-sigma for edm (exact at integer times).

    python benchmarks/sampler_accuracy.py            # ~8 min on a busy 2-core CPU
    python benchmarks/sampler_accuracy.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.mixture import GaussianMixture

import jaxdiff

SCHEDULE = jaxdiff.make_schedule("linear")
NFE_TARGETS = (5, 10, 20, 50, 100)
ORDER_MIN_NFE = 20
# Errors below this are float32 round-off of the sampler maths, not discretisation error.
ROUNDOFF = 3e-6
MU = np.array([0.5, -0.8, 0.0, 0.3])
STD = np.array([0.05, 0.2, 0.5, 1.0])
# Digits are integers 0..16: x / 8 - 1 has a quantisation step of 1/8 whose uniform
# dequantisation variance is (1/8)^2 / 12; used as the mixture's covariance floor.
DEQUANT_VAR = (1 / 8) ** 2 / 12


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked sampler configuration."""

    label: str
    sampler: str
    options: tuple = ()
    sigma_time: bool = False  # fractional t is linear in sigma (euler family), else log-sigma
    stochastic: bool = False
    # ddim and pndm always step from t to t - T // N (as diffusers), which is off the grid
    # when N does not divide T: only such N are used for them (see the stride check).
    divides_t: bool = False


_VP = (("clip_sample", False), ("timestep_spacing", "trailing"))
_PNDM = (("set_alpha_to_one", True), ("timestep_spacing", "trailing"))
CONFIGS = (
    Config("ddpm", "ddpm", _VP, stochastic=True),
    Config("ddim eta=0", "ddim", _VP, divides_t=True),
    Config("pndm plms", "pndm", (("skip_prk_steps", True), *_PNDM), divides_t=True),
    Config("pndm prk", "pndm", _PNDM, divides_t=True),
    Config("dpm++ 1", "dpm_solver", (("solver_order", 1),)),
    Config("dpm++ 2", "dpm_solver", (("solver_order", 2),)),
    Config("dpm++ 3", "dpm_solver", (("solver_order", 3),)),
    Config("unipc bh2 2", "unipc", (("solver_order", 2),)),
    Config("unipc bh2 3", "unipc", (("solver_order", 3),)),
    Config("euler", "euler", (), sigma_time=True),
    Config("euler_anc", "euler_ancestral", (), sigma_time=True, stochastic=True),
    Config("heun", "heun", (), sigma_time=True),
    Config("edm", "edm"),
)


# ----------------------------------------------------------------------------------------
# Time conventions and closed-form denoisers.


def sigma_table() -> np.ndarray:
    """Karras sigma of each training timestep, float32 as the samplers compute it [T]."""
    ac = np.asarray(SCHEDULE.alphas_cumprod, np.float32)
    return ((np.float32(1) - ac) / ac) ** np.float32(0.5)


def alpha_sd(t: jax.Array, sigma_time: bool) -> tuple[jax.Array, jax.Array]:
    """(alpha_t, sigma_t) of the VP process at model time t [B] (fractional allowed)."""
    table = jnp.asarray(sigma_table())
    grid = jnp.arange(table.shape[0], dtype=jnp.float32)
    if sigma_time:
        sig = jnp.interp(t, grid, table)
    else:
        sig = jnp.exp(jnp.interp(t, grid, jnp.log(table)))
    alpha = jax.lax.rsqrt(1.0 + sig * sig)
    return alpha, sig * alpha


def sigma_of_t_host(t: float, sigma_time: bool) -> float:
    """Host float64 twin of :func:`alpha_sd`'s sigma."""
    table = sigma_table().astype(np.float64)
    grid = np.arange(table.shape[0])
    if sigma_time:
        return float(np.interp(t, grid, table))
    return float(np.exp(np.interp(t, grid, np.log(table))))


def gaussian_model(sigma_time: bool):
    """E[eps | x_t] for x_0 ~ N(MU, diag(STD^2)): sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2)."""
    mu, var = jnp.asarray(MU, jnp.float32), jnp.asarray(STD**2, jnp.float32)

    def model_fn(x, t):
        a, sd = (v[:, None] for v in alpha_sd(t, sigma_time))
        return sd * (x - a * mu) / (a * a * var + sd * sd)

    return model_fn


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture with each covariance as eigenvectors U [K, D, D] and values [K, D]."""

    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, D]
    covs: np.ndarray  # [K, D, D]
    evecs: np.ndarray
    evals: np.ndarray

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        z = rng.standard_normal((n, self.means.shape[1]))
        root = self.evecs * np.sqrt(self.evals)[:, None, :]  # U diag(sqrt(lam))
        return self.means[comp] + np.einsum("nde,ne->nd", root[comp], z)


def fit_digits_mixture(seed: int = 0) -> Mixture:
    """10-component full-covariance mixture of the digits in [-1, 1] (fixed fitting seed)."""
    x = load_digits().data / 8.0 - 1.0
    gmm = GaussianMixture(10, covariance_type="full", reg_covar=DEQUANT_VAR, random_state=seed)
    gmm.fit(x)
    evals, evecs = np.linalg.eigh(gmm.covariances_)
    return Mixture(gmm.weights_, gmm.means_, gmm.covariances_, evecs, evals)


def mixture_model(mix: Mixture, sigma_time: bool):
    """Exact E[eps | x_t] of a mixture: posterior component weights with covariances
    alpha^2 Sigma_k + sigma^2 I, each component's eps = sigma (alpha^2 Sigma_k + sigma^2 I)^-1
    (x - alpha mu_k), all in the components' eigenbases (float32)."""
    u = jnp.asarray(mix.evecs, jnp.float32)
    lam = jnp.asarray(mix.evals, jnp.float32)
    proj_mu = jnp.asarray(np.einsum("kd,kde->ke", mix.means, mix.evecs), jnp.float32)
    log_w = jnp.asarray(np.log(mix.weights), jnp.float32)

    def model_fn(x, t):
        a, sd = (v[:, None, None] for v in alpha_sd(t, sigma_time))
        y = jnp.einsum("bd,kde->bke", x, u) - a * proj_mu  # [B, K, D]
        den = a * a * lam + sd * sd
        logits = log_w - 0.5 * jnp.sum(jnp.log(den) + y * y / den, axis=-1)  # [B, K]
        r = jax.nn.softmax(logits, axis=-1)[..., None]
        return jnp.einsum("bke,kde->bd", r * sd * y / den, u)

    return model_fn


def mixture_eps_host(mix: Mixture, x: np.ndarray, alpha: float, sd: float) -> np.ndarray:
    """float64 E[eps | x_t] by direct solves, to check :func:`mixture_model`."""
    covs = alpha**2 * mix.covs + sd**2 * np.eye(mix.means.shape[1])
    diff = x[:, None, :] - alpha * mix.means[None]  # [B, K, D]
    sol = np.linalg.solve(covs[None], diff[..., None])[..., 0]
    _, logdet = np.linalg.slogdet(covs)
    logits = np.log(mix.weights) - 0.5 * (logdet + np.sum(diff * sol, axis=-1))
    r = np.exp(logits - logits.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return sd * np.einsum("bk,bkd->bd", r, sol)


# ----------------------------------------------------------------------------------------
# Distances.


def frechet(m1, c1, m2, c2) -> float:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) (W2^2 between Gaussians)."""
    w, v = np.linalg.eigh(c1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(root @ c2 @ root)
    value = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
    return float(max(value - 2 * np.sum(np.sqrt(np.clip(mid, 0, None))), 0.0))


def gauss_kl(m1, c1, m2, c2) -> float:
    """KL(N(m1, C1) || N(m2, C2))."""
    inv = np.linalg.inv(c2)
    diff = m2 - m1
    logdet = np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1]
    return float(0.5 * (np.trace(inv @ c1) + diff @ inv @ diff - len(m1) + logdet))


def sample_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def order_of(nfes, errs) -> float:
    """-slope of log err vs log NFE over NFE >= ORDER_MIN_NFE, errors above round-off."""
    pts = [(n, e) for n, e in zip(nfes, errs, strict=True) if n >= ORDER_MIN_NFE and e > ROUNDOFF]
    if len(pts) < 2:
        return float("nan")
    n, e = np.log(np.array(pts)).T
    return float(-np.polyfit(n, e, 1)[0])


# ----------------------------------------------------------------------------------------
# Driving the samplers.


def loop_of(cfg: Config, steps: int) -> jaxdiff.SamplingLoop:
    return jaxdiff.SamplingLoop(
        cfg.sampler, schedule=SCHEDULE, num_steps=steps, **dict(cfg.options)
    )


def step_grid(cfg: Config) -> dict[int, tuple[int, int]]:
    """NFE target -> (steps, NFE) closest to it (None where off by more than 50%)."""
    nfe_of = {}
    for steps in range(1, 121):
        if cfg.divides_t and SCHEDULE.num_train_timesteps % steps:
            continue
        try:
            nfe_of[steps] = loop_of(cfg, steps).num_model_calls
        except ValueError:  # e.g. edm needs >= 2 steps, pndm's PRK warm-up >= 4
            continue
    grid = {}
    for target in NFE_TARGETS:
        steps = min(nfe_of, key=lambda s: (abs(nfe_of[s] - target), nfe_of[s]))
        if abs(nfe_of[steps] - target) <= 0.5 * target:
            grid[target] = (steps, nfe_of[steps])
    return grid


def start_of(cfg: Config, steps: int) -> tuple[float, float]:
    """(VP std of the first model input per unit of noise, its model time)."""
    loop = loop_of(cfg, steps)
    state = loop.init(jnp.ones((1, 1)))
    _, x_in, t = loop.model_input(state, 0, noise=jnp.zeros((1, 1)))
    return float(x_in[0, 0]), float(t[0])


def run(cfg: Config, model_fn, noise, steps: int, **kw) -> np.ndarray:
    out = jaxdiff.sample(
        model_fn, noise, schedule=SCHEDULE, sampler=cfg.sampler, num_steps=steps,
        **dict(cfg.options), **kw,
    )  # fmt: skip
    return np.asarray(out, np.float64)


def exact_law(cfg: Config, model_fn, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the sampler's output law, exactly, by linearity."""
    d = len(MU)
    basis = np.vstack([np.zeros(d), np.eye(d)])
    kw = {}
    if cfg.stochastic:
        k = loop_of(cfg, steps).num_model_calls
        noise = np.zeros((k, 1 + d + k * d, d), np.float32)
        for j in range(k):
            noise[j, 1 + d + j * d + np.arange(d), np.arange(d)] = 1.0
        basis = np.vstack([basis, np.zeros((k * d, d))])
        kw["step_noise"] = jnp.asarray(noise)
    out = run(cfg, model_fn, jnp.asarray(basis, jnp.float32), steps, **kw)
    cols = out[1:] - out[0]  # each row: the image of one unit input
    return out[0], cols.T @ cols


def limit_law(cfg: Config, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The law the sampler converges to from x_T ~ N(0, c^2 I) at its first time: the exact
    probability-flow map (deterministic) or the exact reverse SDE (stochastic)."""
    c, t0 = start_of(cfg, steps)
    sig = sigma_of_t_host(t0, cfg.sigma_time)
    u = STD**2 + sig**2  # VE variance of the true marginal at sigma
    if not cfg.stochastic:  # x_0 - mu = (x_T^VE - mu) s / sqrt(u)
        return MU - MU * STD / np.sqrt(u), np.diag((c * np.sqrt(1 + sig**2) * STD) ** 2 / u)
    excess = c**2 * (1 + sig**2) - u  # mean error decays as u, variance excess as u^2
    return MU - MU * STD**2 / u, np.diag(STD**2 + excess * STD**4 / u**2)


# ----------------------------------------------------------------------------------------
# Reports.


def fmt(v: float) -> str:
    return "     n/a" if not np.isfinite(v) else f"{v:8.2e}"


def print_table(title: str, rows: dict, grids: dict, orders: dict | None, note: str = "") -> None:
    """rows[label][target] -> value; cells show the NFE actually used where it differs."""
    print(f"\n{title}")
    head = "".join(f"{f'NFE~{t}':>15}" for t in NFE_TARGETS)
    print(f"{'sampler':<14}{head}" + ("   order" if orders else ""))
    for label, vals in rows.items():
        cells = ""
        for t in NFE_TARGETS:
            if t not in vals:
                cells += f"{'-':>15}"
                continue
            nfe = grids[label][t][1]
            tag = f"({nfe})" if nfe != t else ""
            cells += f"{fmt(vals[t]):>10}{tag:>5}"
        print(f"{label:<14}{cells}" + (f"{orders[label]:8.2f}" if orders else ""))
    if note:
        print(note)


def print_markdown(title: str, rows: dict, grids: dict, orders: dict) -> None:
    print(f"\n{title} (markdown)\n")
    print("| sampler | " + " | ".join(f"NFE {t}" for t in NFE_TARGETS) + " | order |")
    print("|---" * (len(NFE_TARGETS) + 2) + "|")
    for label, vals in rows.items():
        cells = []
        for t in NFE_TARGETS:
            if t not in vals:
                cells.append("-")
                continue
            nfe = grids[label][t][1]
            cells.append(f"{vals[t]:.2e}" + (f" ({nfe})" if nfe != t else ""))
        o = orders[label]
        print(
            f"| {label} | "
            + " | ".join(cells)
            + (f" | {o:.2f} |" if np.isfinite(o) else " | n/a |")
        )


def print_grids(grids: dict) -> None:
    print("\nsteps/NFE used per NFE target")
    for label, grid in grids.items():
        cells = "".join(f"{f'{s}/{n}':>10}" for s, n in grid.values())
        print(f"{label:<14}{cells}")


# ----------------------------------------------------------------------------------------
# The two experiments.


def gaussian_experiment(grids: dict) -> None:
    """(a): exact W2 / KL of every sampler's output law to N(MU, diag(STD^2))."""
    target = (MU, np.diag(STD**2))
    models = {flag: gaussian_model(flag) for flag in (False, True)}
    w2, kl, w2_lim, per_dim, floors = {}, {}, {}, [], {}
    for cfg in CONFIGS:
        w2[cfg.label], kl[cfg.label], w2_lim[cfg.label] = {}, {}, {}
        for t, (steps, nfe) in grids[cfg.label].items():
            m, c = exact_law(cfg, models[cfg.sigma_time], steps)
            lm, lc = limit_law(cfg, steps)
            w2[cfg.label][t] = np.sqrt(frechet(m, c, *target))
            kl[cfg.label][t] = gauss_kl(m, c, *target) / len(MU)
            w2_lim[cfg.label][t] = np.sqrt(frechet(m, c, lm, lc))
            floors[cfg.label] = np.sqrt(frechet(lm, lc, *target))
            sd = np.sqrt(np.diag(c))
            corr = np.abs(c / np.outer(sd, sd) - np.eye(len(MU))).max()
            dim_w2 = np.sqrt((m - MU) ** 2 + (sd - STD) ** 2)
            dim_kl = np.log(STD / sd) + (sd**2 + (m - MU) ** 2) / (2 * STD**2) - 0.5
            per_dim.append((cfg.label, steps, nfe, dim_w2, dim_kl, corr))
    orders = {k: order_of([grids[k][t][1] for t in v], [w2_lim[k][t] for t in v])
              for k, v in w2_lim.items()}  # fmt: skip
    print(f"\n(a) Gaussian target mu={MU.tolist()} std={STD.tolist()}, linear schedule, eps")
    print_grids(grids)
    floor_note = "floor: W2(exact limit law from x_T ~ N(0, I) at t=999 || target) = " + ", ".join(
        sorted({f"{v:.2e}" for v in floors.values()})
    )
    print_table("W2(sampler law, target), all 4 dims", w2, grids, orders, floor_note)
    print("order: slope vs NFE >= 20 of W2(sampler law, its exact ODE/SDE limit law)")
    print_table("W2(sampler law, its limit law)", w2_lim, grids, None)
    print_table("KL(sampler law || target) per dimension (total / 4)", kl, grids, None)
    print("\nper dimension (marginals): W2_d and KL_d for d = 0..3; max |off-diagonal corr|")
    print(f"{'sampler':<14}{'steps':>6}{'NFE':>5}" + "".join(f"{f'W2_{d}':>10}" for d in range(4))
          + "".join(f"{f'KL_{d}':>10}" for d in range(4)) + f"{'corr':>10}")  # fmt: skip
    for label, steps, nfe, dw, dk, corr in per_dim:
        cells = "".join(f"{v:10.2e}" for v in (*dw, *dk, corr))
        print(f"{label:<14}{steps:>6}{nfe:>5}{cells}")
    print_markdown("W2 to the Gaussian target", w2, grids, orders)


def grid_diagnostics() -> None:
    """Three effects of the samplers' time grids (not of their update rules) on (a)."""
    model, d = gaussian_model(False), 2  # dimension 2: mu = 0, std = 0.5
    print("\n(a') grid effects on the Gaussian target")
    print("1. The last step to sigma = 0 is first order (final_sigmas_type='zero'). Its relative")
    print("   std error alone is s / sqrt(s^2 + sigma_last^2) - 1, and on a linspace-in-t grid")
    print("   sigma_last^2 ~ beta_0 t_last ~ 1/N: it caps the multistep solvers' order at ~1.")
    print(f"   {'sampler':<14}{'steps':>6}{'t_last':>7}{'std err (dim 2)':>17}{'last step':>11}")
    for label, order in (("dpm_solver", 3), ("unipc", 3)):
        cfg = Config(f"{label} {order}", label, (("solver_order", order),))
        for steps in (50, 100, 200, 400):
            _, c = exact_law(cfg, model, steps)
            _, lc = limit_law(cfg, steps)
            t_last = float(loop_of(cfg, steps).timesteps[-1])
            sig = sigma_of_t_host(t_last, False)
            pred = STD[d] / np.sqrt(STD[d] ** 2 + sig**2) - 1
            err = np.sqrt(c[d, d] / lc[d, d]) - 1
            print(f"   {cfg.label:<14}{steps:>6}{t_last:>7.0f}{err:>17.2e}{pred:>11.2e}")
    print("2. ddim and pndm step from t to t - T // N whatever the spacing (as diffusers): with")
    print("   'trailing' spacing and N not dividing T the next call is at another t than the")
    print("   state's. W2(sampler law, its limit law), all dims:")
    rows = (
        Config("pndm trailing", "pndm", (("skip_prk_steps", True), *_PNDM)),
        Config("pndm leading", "pndm", (("skip_prk_steps", True), ("set_alpha_to_one", True))),
        Config("ddim trailing", "ddim", _VP),
    )
    diagnostic_rows(rows, model, (91, 99, 100))
    print("3. dpm_solver/unipc with use_karras_sigmas=True round the model's t to integers but")
    print("   step on the unrounded Karras sigmas (as diffusers); euler keeps the fractional t.")
    print("   W2(sampler law, its limit law), all dims:")
    rows = tuple(
        Config(f"{name} karras", name, (("use_karras_sigmas", True), *extra))
        for name, extra in (("dpm_solver", (("solver_order", 3),)), ("unipc", ()), ("euler", ()))
    )
    diagnostic_rows(rows, model, (50, 100, 200, 400))


def diagnostic_rows(rows: tuple, model_fn, steps_list: tuple) -> None:
    print(f"   {'sampler':<18}" + "".join(f"{f'N={n}':>10}" for n in steps_list))
    for cfg in rows:
        cells = ""
        for steps in steps_list:
            law, lim = exact_law(cfg, model_fn, steps), limit_law(cfg, steps)
            cells += f"{np.sqrt(frechet(*law, *lim)):10.2e}"
        print(f"   {cfg.label:<18}{cells}")


def mixture_experiment(grids: dict, n: int) -> None:
    """(b): Frechet distance to true mixture samples and pathwise error to a reference."""
    mix = fit_digits_mixture(seed=0)
    models = {flag: mixture_model(mix, flag) for flag in (False, True)}
    check_mixture_model(mix, models[False])
    true_a, true_b = mix.sample(n, seed=1), mix.sample(n, seed=2)
    stats_a = sample_stats(true_a)
    floor = frechet(*stats_a, *sample_stats(true_b))
    noise = jax.random.normal(jax.random.key(0), (n, 64), jnp.float32)
    refs = {}
    fd, path = {}, {}
    for cfg in CONFIGS:
        fd[cfg.label], path[cfg.label] = {}, {}
        for t, (steps, _) in grids[cfg.label].items():
            x = run(cfg, models[cfg.sigma_time], noise, steps, key=jax.random.key(1))
            fd[cfg.label][t] = frechet(*sample_stats(x), *stats_a)
            if not cfg.stochastic:
                ref = reference(refs, models[False], noise, start_of(cfg, steps)[0])
                path[cfg.label][t] = float(np.sqrt(np.mean((x - ref) ** 2)))
    orders = {k: order_of([grids[k][t][1] for t in v], list(v.values())) for k, v in path.items()}
    ref = refs[min(refs, key=lambda c: abs(c - 1.0))]
    check = run(Config("u", "unipc", (("solver_order", 3),)), models[False], noise, 999)
    print(f"\n(b) digits mixture (10 full-covariance components, 64 dims), {n} samples")
    print(f"FD floor (true vs true, {n} each): {floor:.4f}; FD(reference solution, true): "
          f"{frechet(*sample_stats(ref), *stats_a):.4f}")  # fmt: skip
    print(f"reference: dpm++ 3 at 999 steps; RMS to unipc bh2 3 at 999 steps: "
          f"{np.sqrt(np.mean((ref - check) ** 2)):.2e}")  # fmt: skip
    print_table(f"FD(sampler, true) [floor {floor:.4f}]", fd, grids, None)
    print_table("RMS distance to the reference solution from the same x_T (deterministic only)",
                path, grids, orders, "order: slope vs NFE >= 20 of that RMS distance")  # fmt: skip
    print_markdown("FD to the digits mixture; order of the RMS distance", fd, grids, orders)


def reference(refs: dict, model_fn, noise, scale: float) -> np.ndarray:
    """A converged probability-flow solution from x_T = scale * noise (cached per scale)."""
    key = round(scale, 9)
    if key not in refs:
        cfg = Config("ref", "dpm_solver", (("solver_order", 3),))
        refs[key] = run(cfg, model_fn, noise * scale, 999)
    return refs[key]


def check_mixture_model(mix: Mixture, model_fn) -> None:
    """Print the float32 model's worst relative error against float64 direct solves."""
    x = mix.sample(64, seed=3)
    worst = 0.0
    for t in (0, 10, 100, 500, 999):
        a, sd = (float(v[0]) for v in alpha_sd(jnp.full((1,), t, jnp.float32), False))
        xt = a * x + sd * np.random.default_rng(t).standard_normal(x.shape)
        got = np.asarray(model_fn(jnp.asarray(xt, jnp.float32), jnp.full((64,), t, jnp.float32)))
        want = mixture_eps_host(mix, xt, a, sd)
        worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    print(f"mixture model check: max |float32 - float64| / max |eps| = {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples per run in (b)")
    parser.add_argument("--quick", action="store_true", help="3 samplers, 500 samples")
    args = parser.parse_args()
    global CONFIGS
    if args.quick:
        CONFIGS = tuple(c for c in CONFIGS if c.label in ("ddpm", "pndm prk", "heun"))
        args.samples = 300
    start = time.perf_counter()
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, loadavg at start "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    grids = {cfg.label: step_grid(cfg) for cfg in CONFIGS}
    gaussian_experiment(grids)
    grid_diagnostics()
    print(f"\n[(a) done after {time.perf_counter() - start:.0f} s]")
    mixture_experiment(grids, args.samples)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, loadavg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
