"""jaxdiff: functional diffusion models in JAX.

Public API re-exports only; see the submodules for details.
"""

from jaxdiff import diffusion, guidance, losses, samplers, schedules
from jaxdiff.guidance import classifier_free_guidance, classifier_guidance, gradient_guidance
from jaxdiff.samplers import SamplingLoop, sample
from jaxdiff.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    EDMSchedule,
    VPLinearSchedule,
    make_schedule,
)

__version__ = "0.1.0"

__all__ = [
    "SamplingLoop",
    "CosineSchedule",
    "DiscreteSchedule",
    "EDMSchedule",
    "VPLinearSchedule",
    "classifier_free_guidance",
    "classifier_guidance",
    "gradient_guidance",
    "diffusion",
    "guidance",
    "losses",
    "make_schedule",
    "sample",
    "samplers",
    "schedules",
]
