"""Samplers: the whole family as pure, jitted lax.scan loops, numerically equal to diffusers.

``sample`` is the one entry point; ``SamplingLoop`` is the step-level API. Sampler names:
"ddpm", "ddim", "pndm", "dpm_solver", "unipc", "euler", "euler_ancestral", "heun", "edm".
"""

from jaxdiff.samplers.base import Plan, Sampler
from jaxdiff.samplers.ddpm import DDIM, DDPM
from jaxdiff.samplers.dpm_solver import DPMSolver
from jaxdiff.samplers.driver import SamplingLoop, available, get, register, sample
from jaxdiff.samplers.edm import EDM
from jaxdiff.samplers.euler import Euler, EulerAncestral, Heun
from jaxdiff.samplers.pndm import PNDM
from jaxdiff.samplers.unipc import UniPC

for _cls in (DDPM, DDIM, PNDM, DPMSolver, UniPC, Euler, EulerAncestral, Heun, EDM):
    register(_cls())

__all__ = ["Plan", "Sampler", "SamplingLoop", "available", "get", "register", "sample"]
