"""Samplers: the whole family as pure, jitted lax.scan loops, numerically equal to diffusers.

``sample`` is the one entry point; ``SamplingLoop`` is the step-level API. Each sampler is a
factory in a module named after it (``ddim.ddim(schedule, num_steps, eta=...)``) returning a
:class:`Sampler` of pure functions; ``SAMPLERS`` maps the names ``sample`` accepts to them.
"""

from jaxdiff.samplers import grids
from jaxdiff.samplers.core import Sampler, traceable
from jaxdiff.samplers.ddim import ddim
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.deis import deis
from jaxdiff.samplers.dpm_solver import dpm_solver
from jaxdiff.samplers.driver import SamplingLoop, option_names, sample
from jaxdiff.samplers.edm import edm
from jaxdiff.samplers.euler import euler, euler_ancestral
from jaxdiff.samplers.heun import heun
from jaxdiff.samplers.lcm import lcm
from jaxdiff.samplers.pndm import pndm
from jaxdiff.samplers.repaint import repaint
from jaxdiff.samplers.unipc import unipc

SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "pndm": pndm,
    "dpm_solver": dpm_solver,
    "unipc": unipc,
    "deis": deis,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "edm": edm,
    "lcm": lcm,
    "repaint": repaint,
}


def available() -> tuple[str, ...]:
    """Names of all samplers, sorted."""
    return tuple(sorted(SAMPLERS))


__all__ = [
    "SAMPLERS",
    "Sampler",
    "SamplingLoop",
    "available",
    "grids",
    "option_names",
    "sample",
    "traceable",
]
