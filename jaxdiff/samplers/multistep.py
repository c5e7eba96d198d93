"""What the multistep exponential integrators (DPM-Solver, UniPC, DEIS) share: lambda and the
warm-up rule for the order of each step."""

from __future__ import annotations

import numpy as np


def alpha_sigma_lambda(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VP (alpha, sigma, lambda = log(alpha / sigma)) of Karras sigmas, float64 (sigma 0 gives
    lambda = +inf)."""
    s = sigmas.astype(np.float64)
    alpha = 1.0 / np.sqrt(s**2 + 1.0)
    sigma = s * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    return alpha, sigma, lam


def dpm_order(
    i: int, start: int, num_steps: int, solver_order: int, lower_order_final: bool, *, final: bool
) -> int:
    """The order of step i (diffusers' DPM-Solver / DEIS rule): the warm-up uses the outputs
    available since ``start``; with ``lower_order_final`` and fewer than 15 steps the last two
    steps drop to orders 1 and 2; ``final`` forces a first-order last step."""
    available = min(i - start, solver_order)
    short = lower_order_final and num_steps < 15
    if solver_order == 1 or available < 1 or (i == num_steps - 1 and (final or short)):
        return 1
    if solver_order == 2 or available < 2 or (i == num_steps - 2 and short):
        return 2
    return 3
