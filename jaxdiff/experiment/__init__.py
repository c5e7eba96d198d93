"""Config-driven runs (the boundary behind train.py and sample.py).

``config`` (schema, validation), ``from_config`` (config -> typed objects), ``run`` (the
training run), ``workdir`` (a run's files, loading it for sampling), ``sampling`` (drawing
images), ``diffusers_dir``, ``images`` (PNG / .npz output), ``per_sample_rng``. See
docs/architecture.md.
"""

from jaxdiff.experiment.config import SCHEMA, base_config, config_from_dict, validate_config
from jaxdiff.experiment.diffusers_dir import load_diffusers_dir
from jaxdiff.experiment.run import train_and_evaluate
from jaxdiff.experiment.sampling import Generator
from jaxdiff.experiment.workdir import check_workdir, load_workdir

__all__ = [
    "SCHEMA",
    "Generator",
    "base_config",
    "check_workdir",
    "config_from_dict",
    "load_diffusers_dir",
    "load_workdir",
    "train_and_evaluate",
    "validate_config",
]
