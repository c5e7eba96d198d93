"""Config-driven runs (the boundary behind train.py and sample.py): schema, builders, run."""

from jaxdiff.experiment.config import SCHEMA, base_config, validate_config
from jaxdiff.experiment.run import Components, check_workdir, sample_grid, train_and_evaluate

__all__ = [
    "SCHEMA",
    "Components",
    "base_config",
    "check_workdir",
    "sample_grid",
    "train_and_evaluate",
    "validate_config",
]
