"""A diffusers-format U-Net folder (a pipeline with unet/ and scheduler/, or a unet folder) as a
:class:`~jaxdiff.experiment.sampling.Generator` (behind ``sample.py --diffusers_dir``)."""

from __future__ import annotations

import json
import os

from jaxdiff import models
from jaxdiff.experiment.sampling import Generator
from jaxdiff.schedules import make_schedule


def _scheduler_config(path: str) -> dict:
    for candidate in (
        os.path.join(path, "scheduler", "scheduler_config.json"),
        os.path.join(path, "scheduler_config.json"),
    ):
        if os.path.exists(candidate):
            with open(candidate) as f:
                return json.load(f)
    return {}


def load_diffusers_dir(path: str, *, image_size: int | None = None) -> Generator:
    """A diffusers-format U-Net with the schedule of its scheduler_config.json (default:
    DDPM's linear betas).

    A U-Net with twice as many output as input channels is read as a learned-range variance
    model (diffusers' ``variance_type="learned_range"``).

    Args:
      path: a pipeline folder (holding unet/ and scheduler/) or a unet folder.
      image_size: sample size (default: the U-Net config's ``sample_size``, else 32).

    Returns:
      A :class:`Generator` with the U-Net's parameters.
    """
    path = os.path.abspath(path)
    unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    module, params = models.load_diffusers_unet(unet_dir)
    sched_cfg = _scheduler_config(path)
    schedule = make_schedule(
        sched_cfg.get("beta_schedule", "linear"),
        sched_cfg.get("num_train_timesteps", 1000),
        beta_start=sched_cfg.get("beta_start", 0.0001),
        beta_end=sched_cfg.get("beta_end", 0.02),
        trained_betas=sched_cfg.get("trained_betas"),
        rescale_betas_zero_snr=sched_cfg.get("rescale_betas_zero_snr", False),
    )
    with open(os.path.join(unet_dir, "config.json")) as f:
        unet_cfg = json.load(f)
    size = image_size or unet_cfg.get("sample_size") or 32
    size = size[0] if isinstance(size, list | tuple) else size
    in_channels = int(unet_cfg.get("in_channels", 3))
    out_channels = int(unet_cfg.get("out_channels", in_channels))
    return Generator(
        module,
        params,
        schedule,
        objective="diffusion",
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        sigma_data=0.5,
        image_shape=(int(size), int(size), in_channels),
        learned_variance=out_channels == 2 * in_channels,
    )
