"""jaxdiff: functional diffusion models in JAX.

Public API re-exports only; see the submodules for details.
"""

from jaxdiff import diffusion, losses, schedules
from jaxdiff.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    EDMSchedule,
    VPLinearSchedule,
    make_schedule,
)

__version__ = "0.1.0"

__all__ = [
    "CosineSchedule",
    "DiscreteSchedule",
    "EDMSchedule",
    "VPLinearSchedule",
    "diffusion",
    "losses",
    "make_schedule",
    "schedules",
]
