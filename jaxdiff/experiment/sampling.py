"""Sampling from a trained workdir or a diffusers-format U-Net (the library behind sample.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import models, samplers, training
from jaxdiff.experiment import builders
from jaxdiff.experiment.config import validate_config
from jaxdiff.schedules import make_schedule

RUN_INFO = "run_info.json"


class Generator:
    """A model, its sampling parameters and schedule, ready to draw images."""

    def __init__(
        self, model, params, schedule, *, objective, prediction_type, sigma_data, image_shape
    ):
        self.model, self.params, self.schedule = model, params, schedule
        self.objective, self.prediction_type = objective, prediction_type
        self.sigma_data, self.image_shape = sigma_data, tuple(image_shape)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unconditional model)."""
        return int(self.model.num_classes or 0)

    def check(self, *, sampler: str, labels: np.ndarray | None, guidance_scale: float) -> None:
        """Refuse inputs that do not fit this model before anything compiles."""
        if sampler not in samplers.available():
            raise ValueError(
                f"Unknown sampler {sampler!r}; available: {', '.join(samplers.available())}."
            )
        if labels is None:
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs a class-conditional model; this "
                    "model is unconditional (use guidance_scale=1)."
                )
            return
        if not self.num_classes:
            raise ValueError("Class labels were given but this model is unconditional.")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"Class label {int(bad[0])} is out of range; this model has classes "
                f"0..{self.num_classes - 1}."
            )

    def sample(
        self,
        *,
        num_samples: int,
        sampler: str,
        num_steps: int,
        guidance_scale: float = 1.0,
        labels: Sequence[int] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        options: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Draw ``num_samples`` images [N, H, W, C] in [-1, 1] (and their labels).

        ``labels`` (cycled to N) selects classes of a conditional model (None: classes 0, 1,
        2, ... cycling; for an unconditional model, no labels). Sample i depends only on
        (seed, i), whatever the batch size.
        """
        from tqdm.auto import tqdm

        if labels is None and self.num_classes:
            labels = np.arange(num_samples) % self.num_classes
        elif labels is not None:
            labels = np.resize(np.asarray(labels, np.int32), num_samples)
        self.check(sampler=sampler, labels=labels, guidance_scale=guidance_scale)
        generate = builders.make_generate_fn(
            self.model,
            self.schedule,
            objective=self.objective,
            prediction_type=self.prediction_type,
            sigma_data=self.sigma_data,
            sampler=sampler,
            num_steps=num_steps,
            options=options or {},
        )
        out = []
        bar = tqdm(total=num_samples, disable=not progress, desc=f"{sampler} x{num_steps}")
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            keys = builders.per_sample_keys(seed, start, n)
            noise = builders.per_sample_noise(keys, self.image_shape)
            lab = None if labels is None else jnp.asarray(labels[start : start + n])
            out.append(
                np.asarray(generate(self.params, noise, keys, lab, jnp.float32(guidance_scale)))
            )
            bar.update(n)
        bar.close()
        return np.concatenate(out), labels


def write_run_info(workdir: str, *, image_shape, num_classes) -> None:
    """Record what sampling needs without the dataset (image shape, classes)."""
    with open(os.path.join(workdir, RUN_INFO), "w") as f:
        json.dump({"image_shape": list(image_shape), "num_classes": num_classes}, f)


def load_workdir(workdir: str, *, step: int | None = None) -> Generator:
    """The EMA parameters of a training workdir (latest checkpoint, or ``step``)."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is not a directory.")
    paths = [os.path.join(workdir, n) for n in ("config.json", RUN_INFO)]
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(
                f"{workdir} is not a training workdir: {os.path.basename(p)} is missing."
            )
    with open(paths[0]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths[1]) as f:
        info = json.load(f)
    validate_config(config)
    model = builders.build_model(config.model, num_classes=info["num_classes"] or None)
    schedule = builders.build_schedule(config.diffusion)
    shape = tuple(info["image_shape"])

    def init_params(key):
        labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
        x = jnp.zeros((1, *shape), jnp.float32)
        return model.init({"params": key}, x, jnp.zeros((1,)), labels=labels)["params"]

    opt, _ = builders.build_optimizer(config)
    abstract = jax.eval_shape(training.make_init_fn(init_params, opt), jax.random.key(0))
    ckpt = training.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        if ckpt.latest_step() is None:
            raise ValueError(f"{workdir} has no checkpoint yet.")
        restored = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    d = config.diffusion
    return Generator(
        model,
        restored.state.ema_params,
        schedule,
        objective=d.objective,
        prediction_type=d.prediction_type,
        sigma_data=d.sigma_data,
        image_shape=shape,
    )


def load_diffusers_dir(path: str, *, image_size: int | None = None) -> Generator:
    """A diffusers-format U-Net (a pipeline folder with unet/ and scheduler/, or a unet
    folder) with the schedule of its scheduler_config.json (default: DDPM's linear)."""
    path = os.path.abspath(path)
    unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    module, params = models.load_diffusers_unet(unet_dir)
    sched_cfg = {}
    for cand in (
        os.path.join(path, "scheduler", "scheduler_config.json"),
        os.path.join(path, "scheduler_config.json"),
    ):
        if os.path.exists(cand):
            with open(cand) as f:
                sched_cfg = json.load(f)
            break
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
    shape = (int(size), int(size), int(unet_cfg.get("in_channels", 3)))
    return Generator(
        module,
        params,
        schedule,
        objective="diffusion",
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        sigma_data=0.5,
        image_shape=shape,
    )
