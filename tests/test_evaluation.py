"""Frechet distance and KID against closed forms."""

import numpy as np
import pytest

from jaxdiff.evaluation import (
    compute_metrics,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_inception_distance,
)


def test_gaussian_frechet_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    eye = np.eye(2)
    assert gaussian_frechet_distance(mu1, eye, mu2, eye) == pytest.approx(5.0)
    # Diagonal covariances: sum (s1 - s2)^2 in the stds.
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert gaussian_frechet_distance(mu1, c1, mu1, c2) == pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2)
    # Rotated: W2^2 between N(0, A) and N(0, B) for commuting A, B is ||A^1/2 - B^1/2||_F^2.
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    a = q @ np.diag([1.0, 2.0, 3.0]) @ q.T
    b = q @ np.diag([4.0, 1.0, 0.5]) @ q.T
    want = np.sum((np.sqrt([1.0, 2.0, 3.0]) - np.sqrt([4.0, 1.0, 0.5])) ** 2)
    assert gaussian_frechet_distance(np.zeros(3), a, np.zeros(3), b) == pytest.approx(want)


def test_sample_frechet_and_kid_separate_distributions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    b = rng.normal(size=(2000, 4))
    c = rng.normal(loc=1.0, size=(2000, 4))
    assert frechet_distance(a, b) < 0.05
    assert frechet_distance(a, c) == pytest.approx(4.0, rel=0.1)
    same, _ = kernel_inception_distance(a, b, num_subsets=10, subset_size=500)
    diff, _ = kernel_inception_distance(a, c, num_subsets=10, subset_size=500)
    assert abs(same) < 0.01 < diff


def test_compute_metrics_on_images_and_bad_shapes():
    rng = np.random.default_rng(1)
    imgs = rng.uniform(-1, 1, size=(300, 4, 4, 1))
    out = compute_metrics(imgs, imgs[::-1].copy(), kid_subset_size=100)
    assert out["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
