"""Streamed Gaussian feature statistics for FID, and their .npz files (pytorch-fid's format).

`FeatureStatistics` accumulates the mean and the centred second moment of features batch by
batch in float64 (Chan et al.'s pairwise update: each batch is centred on its own mean before it
is merged, so no large sum of squares is ever cancelled), so FID never needs all features in
memory. Statistics files hold ``mu`` [D] and ``sigma`` [D, D] (the unbiased covariance, as
``np.cov``) like the files pytorch-fid's ``--save-stats`` writes and reads; jaxdiff adds
``num_samples`` when it knows it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np


class SingularCovarianceWarning(UserWarning):
    """FID from fewer samples than feature dimensions: the covariance estimate is singular."""


def warn_if_singular(num_samples: int, dim: int, what: str = "a feature set") -> None:
    """Warn (`SingularCovarianceWarning`) when ``num_samples <= dim``.

    The covariance of N samples has rank <= N - 1, so below D + 1 samples it is singular and FID
    is dominated by estimation error (pytorch-fid meets the same case as a non-finite matrix
    square root and adds 1e-6 to the diagonal); published FIDs use 10k-50k images for D = 2048.
    """
    if num_samples <= dim:
        warnings.warn(
            f"FID of {what}: {num_samples} samples of {dim}-dimensional features are fewer than "
            f"the dimension + 1, so the covariance estimate is singular (rank <= "
            f"{num_samples - 1}) and the Frechet distance is unreliable; use more images (FID "
            "on Inception features is usually computed from 10k-50k).",
            SingularCovarianceWarning,
            stacklevel=3,
        )


class FeatureStatistics:
    """Running mean and covariance of features [N, D], in float64.

    Example:
      >>> stats = FeatureStatistics()
      >>> for batch in feature_batches:
      ...     stats.update(batch)
      >>> mu, sigma = stats.mean, stats.covariance
    """

    def __init__(self, dim: int | None = None):
        self.num_samples = 0
        self.dim = dim
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of centred samples

    def update(self, features: np.ndarray) -> FeatureStatistics:
        """Add a batch of features [B, D] (any float dtype; accumulated in float64)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            want = f"[B, {self.dim}]" if self.dim is not None else "[B, D]"
            raise ValueError(f"features must be {want}; got shape {x.shape}.")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or infinite values.")
        if len(x) == 0:
            return self
        mean = x.mean(0)
        centred = x - mean
        self._merge(len(x), mean, centred.T @ centred)
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add the samples summarised by ``other`` (e.g. from another process)."""
        if other.num_samples:
            self._merge(other.num_samples, other._mean, other._m2)
        return self

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if self.dim is None:
            self.dim = len(mean)
        if self.num_samples == 0:
            self.num_samples, self._mean, self._m2 = n, mean.copy(), m2.copy()
            return
        total = self.num_samples + n
        delta = mean - self._mean
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.num_samples * n / total)
        self._mean = self._mean + delta * (n / total)
        self.num_samples = total

    @property
    def mean(self) -> np.ndarray:
        """mu [D]."""
        self._require(1)
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """sigma [D, D], unbiased (divides by N - 1, as ``np.cov``)."""
        self._require(2)
        return self._m2 / (self.num_samples - 1)

    def _require(self, n: int) -> None:
        if self.num_samples < n:
            raise ValueError(f"need at least {n} samples; have {self.num_samples}.")

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` (and ``num_samples``) as pytorch-fid's statistics .npz."""
        save_statistics(path, self.mean, self.covariance, self.num_samples)


def save_statistics(
    path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, num_samples: int | None = None
) -> None:
    """Write FID reference statistics (``np.savez_compressed``, as pytorch-fid writes them)."""
    extra = {} if num_samples is None else {"num_samples": np.int64(num_samples)}
    np.savez_compressed(path, mu=np.asarray(mu), sigma=np.asarray(sigma), **extra)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu [D], sigma [D, D], num_samples or None) of a statistics .npz (pytorch-fid's or ours).

    Raises:
      ValueError: when the file has no ``mu`` / ``sigma`` or their shapes disagree.
    """
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(
                f"{path}: a statistics file needs arrays 'mu' and 'sigma' (pytorch-fid's "
                f"format); it has {sorted(f.files)}."
            )
        mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
        n = int(f["num_samples"]) if "num_samples" in f else None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D].")
    return mu, sigma, n
