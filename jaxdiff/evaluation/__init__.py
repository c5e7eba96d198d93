"""Evaluation: FID / KID / precision-recall over Inception (or any) features, CLIP score, and
likelihood in bits/dim (probability-flow ODE, discrete-time VLB).

The command line: ``python -m jaxdiff.evaluation {fid,kid,pr,stats,clip,bpd} ...`` (see
`jaxdiff.evaluation.cli`).
"""

from jaxdiff.evaluation.clip_score import ClipScorer, clip_score
from jaxdiff.evaluation.features import FeatureExtractor, inception_extractor, to_unit_range
from jaxdiff.evaluation.likelihood import ODELikelihood, ode_bits_per_dim
from jaxdiff.evaluation.metrics import (
    compute_metrics,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_inception_distance,
    pixel_features,
)
from jaxdiff.evaluation.ode import ODESolution, dormand_prince
from jaxdiff.evaluation.precision_recall import precision_recall
from jaxdiff.evaluation.stats import (
    FeatureStatistics,
    SingularCovarianceWarning,
    load_statistics,
    save_statistics,
)
from jaxdiff.evaluation.vlb import VLBTerms, vlb_bits_per_dim

__all__ = [
    "ClipScorer",
    "FeatureExtractor",
    "FeatureStatistics",
    "ODELikelihood",
    "ODESolution",
    "SingularCovarianceWarning",
    "VLBTerms",
    "clip_score",
    "compute_metrics",
    "dormand_prince",
    "frechet_distance",
    "gaussian_frechet_distance",
    "inception_extractor",
    "kernel_inception_distance",
    "load_statistics",
    "ode_bits_per_dim",
    "pixel_features",
    "precision_recall",
    "save_statistics",
    "to_unit_range",
    "vlb_bits_per_dim",
]
