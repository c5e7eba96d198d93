"""Sample-quality metrics: Frechet distance and KID over pluggable features."""

from jaxdiff.evaluation.metrics import (
    compute_metrics,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_inception_distance,
    pixel_features,
)

__all__ = [
    "compute_metrics",
    "frechet_distance",
    "gaussian_frechet_distance",
    "kernel_inception_distance",
    "pixel_features",
]
