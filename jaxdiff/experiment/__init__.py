"""Config-driven runs (the boundary behind train.py and sample.py): schema, builders, run."""

from jaxdiff.experiment.config import SCHEMA, base_config, validate_config
from jaxdiff.experiment.run import Components, check_workdir, sample_grid, train_and_evaluate
from jaxdiff.experiment.sampling import Generator, load_diffusers_dir, load_workdir

__all__ = [
    "SCHEMA",
    "Components",
    "Generator",
    "load_diffusers_dir",
    "load_workdir",
    "base_config",
    "check_workdir",
    "sample_grid",
    "train_and_evaluate",
    "validate_config",
]
