"""The ``config.task = "super_resolution"`` run behind train.py, reading its workdir back, and
upsampling with it (the second stage of a cascade, ``sample.py --sr_workdir``).

The stage is a :class:`~jaxdiff.models.SuperResolutionUNet`: the U-Net of ``config.model``
(its class embedding counts the ``config.super_resolution.augment_levels`` augmentation
levels; its output has the image's channels) denoising the high-resolution x_t given the
low-resolution image (``downsample`` by ``factor``, 2x2 ... average pooling), upsampled and
concatenated. Training draws the augmentation level of each example uniformly (noise
conditioning augmentation, Ho et al. 2021); sampling noises the low-resolution input to
``sample_level``. The workdir is a diffusion run's (checkpoints/ with exact resume,
config.json, run_info.json with ``"task": "super_resolution"``, TensorBoard, the progress
bar); every ``config.train.sample_every`` steps and at the end the EMA parameters upsample
``eval_images`` held-out images with ``config.sample``'s sampler: TensorBoard gets their PSNR
(``eval/psnr``) next to bicubic upsampling's (``eval/psnr_bicubic``), and
samples/step_N.png shows rows of (low resolution, bicubic, this stage, the original).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxdiff
from jaxdiff import training
from jaxdiff.experiment import from_config, run_loop
from jaxdiff.experiment import images as images_lib
from jaxdiff.experiment import workdir as workdir_lib
from jaxdiff.experiment.autoencoder import psnr
from jaxdiff.experiment.autoencoder_run import held_out_batch
from jaxdiff.experiment.config import config_from_dict
from jaxdiff.experiment.per_sample_rng import per_sample_keys, per_sample_noise
from jaxdiff.experiment.sampling import sampler_options, sampler_prediction_type
from jaxdiff.models.super_resolution import (
    SuperResolutionUNet,
    augment_low_res,
    conditioned_model_fn,
    downsample,
)
from jaxdiff.training.super_resolution_objective import make_super_resolution_loss_fn

TASK = "super_resolution"
"""run_info.json's ``task`` entry in a super-resolution workdir."""
AUGMENT_SALT = 0x5E5
"""Folded into a seed for the noise that augments the low-resolution input at sampling."""


def build_stage(config: Mapping[str, Any], image_channels: int) -> SuperResolutionUNet:
    """The `SuperResolutionUNet` of ``config.model`` / ``config.super_resolution`` for images
    of ``image_channels``; a U-Net with another class count is refused."""
    sr = config["super_resolution"]
    model_config = dict(config["model"])
    kwargs = dict(model_config["kwargs"])
    levels = sr["augment_levels"]
    if kwargs.setdefault("num_classes", levels) != levels:
        raise ValueError(
            f"config.model.kwargs.num_classes={kwargs['num_classes']}: a super-resolution U-Net's "
            f"classes are the augmentation levels; allowed: {levels} "
            "(config.super_resolution.augment_levels, or leave it out)."
        )
    patch = model_config.get("patch_size", 1)
    kwargs.setdefault("out_channels", image_channels * patch**2)
    model_config["kwargs"] = kwargs
    unet = from_config.build_model(model_config, num_classes=levels, image_channels=image_channels)
    return SuperResolutionUNet(unet, factor=sr["factor"])


def _init_params_fn(module: SuperResolutionUNet, image_shape: tuple[int, ...]):
    def init(key):
        h, w, c = image_shape
        x = jnp.zeros((1, h, w, c), jnp.float32)
        low = jnp.zeros((1, h // module.factor, w // module.factor, c), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32)
        return module.init({"params": key}, x, jnp.zeros((1,)), low_res=low, labels=labels)[
            "params"
        ]

    return init


def bicubic_upsample(low_res: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic upsampling of [N, h, w, C] in [-1, 1] by ``factor`` (jax.image.resize)."""
    n, h, w, c = low_res.shape
    out = jax.image.resize(jnp.asarray(low_res), (n, h * factor, w * factor, c), "bicubic")
    return np.clip(np.asarray(out), -1.0, 1.0)


class SuperResolutionStage:
    """A trained super-resolution stage, ready to upsample.

    Args:
      module: the `SuperResolutionUNet`.
      params: its parameters.
      schedule: its training schedule.
      prediction_type: how its output is read.
      augment_levels: the augmentation levels it was trained with.
      sample_level: the default level of the low-resolution input at sampling.
      image_shape: (H, W, C) of its output.
      run_sampler: the run's ``config.sample`` sampler, steps and options.
    """

    def __init__(self, module, params, schedule, *, prediction_type, augment_levels,
                 sample_level, image_shape, run_sampler):  # fmt: skip
        self.module, self.params, self.schedule = module, params, schedule
        self.prediction_type, self.augment_levels = prediction_type, augment_levels
        self.sample_level, self.image_shape = sample_level, tuple(image_shape)
        self.run_sampler = run_sampler
        self.factor = module.factor
        self._compiled: dict[tuple, Any] = {}

    def _fn(self, sampler: str, num_steps: int, options: Mapping[str, Any]):
        key = (sampler, num_steps, repr(sorted(options.items())))
        if key not in self._compiled:
            opts = sampler_options(sampler, dict(options), learned_variance=False)
            prediction = sampler_prediction_type("diffusion", self.prediction_type)

            def run(params, low, level, aug_noise, noise, keys):
                z = augment_low_res(low, level, aug_noise, schedule=self.schedule,
                                    augment_levels=self.augment_levels)  # fmt: skip
                fn = conditioned_model_fn(self.module, params, z, level)
                return jaxdiff.sample(fn, noise, schedule=self.schedule, sampler=sampler,
                                      num_steps=num_steps, prediction_type=prediction,
                                      key=keys, **opts)  # fmt: skip

            self._compiled[key] = jax.jit(run)
        return self._compiled[key]

    def upsample(
        self,
        low_res: np.ndarray,
        *,
        sampler: str | None = None,
        num_steps: int | None = None,
        level: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        options: Mapping[str, Any] | None = None,
        params: Any = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Upsample [N, h, w, C] in [-1, 1] to [N, h * factor, w * factor, C].

        ``sampler`` / ``num_steps`` / ``options`` default to the run's ``config.sample``;
        ``level`` (default the run's ``sample_level``) is the augmentation level the input is
        noised to (0: used as given). Image i depends only on (seed, i).
        """
        from tqdm.auto import tqdm

        low_res = np.asarray(low_res, np.float32)
        h, w, c = self.image_shape
        want = (h // self.factor, w // self.factor, c)
        if low_res.ndim != 4 or tuple(low_res.shape[1:]) != want:
            raise ValueError(
                f"This stage upsamples images of {want[0]}x{want[1]}x{want[2]} (to {h}x{w}); "
                f"got an array of shape {low_res.shape}."
            )
        level = self.sample_level if level is None else int(level)
        if not 0 <= level < self.augment_levels:
            raise ValueError(
                f"Augmentation level {level} is out of range; allowed: "
                f"0..{self.augment_levels - 1}."
            )
        run = self.run_sampler
        sampler = sampler or run["sampler"]
        num_steps = num_steps or run["num_steps"]
        if options is None:
            options = run["options"] if sampler == run["sampler"] else {}
        fn = self._fn(sampler, num_steps, options)
        params = self.params if params is None else params
        out = []
        bar = tqdm(
            total=len(low_res), disable=not progress, desc=f"upsample {sampler} x{num_steps}"
        )
        for start in range(0, len(low_res), batch_size):
            n = min(batch_size, len(low_res) - start)
            keys = per_sample_keys(seed, start, n)
            noise = per_sample_noise(keys, self.image_shape)
            aug_keys = per_sample_keys(seed ^ AUGMENT_SALT, start, n)
            aug_noise = per_sample_noise(aug_keys, want)
            lv = jnp.full((n,), level, jnp.int32)
            low = jnp.asarray(low_res[start : start + n])
            out.append(np.asarray(fn(params, low, lv, aug_noise, noise, keys)))
            bar.update(n)
        bar.close()
        return np.clip(np.concatenate(out), -1.0, 1.0)


def _run_sampler(config: Mapping[str, Any]) -> dict[str, Any]:
    sample = config["sample"]
    return {"sampler": sample["sampler"], "num_steps": sample["num_steps"],
            "options": dict(sample["options"])}  # fmt: skip


def _stage(config, module, params, schedule, image_shape) -> SuperResolutionStage:
    sr = config["super_resolution"]
    return SuperResolutionStage(
        module, params, schedule, prediction_type=config["diffusion"]["prediction_type"],
        augment_levels=sr["augment_levels"], sample_level=sr["sample_level"],
        image_shape=image_shape, run_sampler=_run_sampler(config),
    )  # fmt: skip


def train_super_resolution(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train the super-resolution stage of ``config`` in ``workdir`` (resuming if it holds
    checkpoints); ``config`` is validated already (see ``train_and_evaluate``).

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    workdir = workdir_lib.check_workdir(workdir)
    dataset = from_config.open_dataset(config.data)
    sr = config.super_resolution
    h, w, c = dataset.image_shape
    if h % sr.factor or w % sr.factor:
        raise ValueError(
            f"Images of {h}x{w} are not a multiple of config.super_resolution.factor={sr.factor}."
        )
    module = build_stage(config, c)
    init_params = _init_params_fn(module, dataset.image_shape)
    try:
        jax.eval_shape(init_params, jax.random.key(0))
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None
    schedule = from_config.build_schedule(config.diffusion)
    if jax.process_index() == 0:
        workdir_lib.write_run_files(
            workdir, config, image_shape=dataset.image_shape, num_classes=None,
            extra={"task": TASK, "factor": sr.factor},
        )  # fmt: skip
    loss_fn = make_super_resolution_loss_fn(
        module.apply, schedule=schedule, factor=sr.factor, augment_levels=sr.augment_levels,
        prediction_type=config.diffusion.prediction_type,
    )  # fmt: skip
    state, step_fn, k_train, mesh = from_config.sharded_training(config, init_params, loss_fn)
    held_out = np.asarray(held_out_batch(dataset, config.data, sr.eval_images)["image"])
    low = np.asarray(downsample(jnp.asarray(held_out), sr.factor))
    bicubic = bicubic_upsample(low, sr.factor)
    stage = _stage(config, module, None, schedule, dataset.image_shape)

    def evaluate(step, state):  # held-out upsampling: PSNR vs bicubic's, a grid
        up = stage.upsample(low, params=state.ema_params, seed=config.sample.seed)
        scalars = {
            "eval/psnr": float(np.mean(psnr(held_out, up))),
            "eval/psnr_bicubic": float(np.mean(psnr(held_out, bicubic))),
        }
        if jax.process_index() == 0:
            n = min(8, len(held_out))
            nearest = np.repeat(np.repeat(low[:n], sr.factor, axis=1), sr.factor, axis=2)
            rows = np.stack([nearest, bicubic[:n], up[:n], held_out[:n]], axis=1)
            path = os.path.join(workdir, workdir_lib.SAMPLES, f"step_{step}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            images_lib.save_image_grid(rows.reshape(-1, *rows.shape[2:]), path, ncol=4, scale=2)
        return scalars, {"psnr": f"{scalars['eval/psnr']:.2f}"}

    def put_batch(b):
        return training.global_batch({"image": b["image"]}, mesh)

    return run_loop.run_training(
        config, workdir, pipeline=run_loop.training_pipeline(config, dataset), step_fn=step_fn,
        state=state, key=k_train, put_batch=put_batch, evaluate=evaluate,
        desc="train super-resolution",
    )  # fmt: skip


def load_super_resolution_workdir(workdir: str, *, step: int | None = None) -> SuperResolutionStage:
    """The EMA parameters of a super-resolution workdir as a :class:`SuperResolutionStage`.

    Without ``step`` the newest readable checkpoint is used (a damaged newer one is skipped
    with a warning); a given ``step`` that is missing or damaged raises one ValueError, as
    does a workdir of another task.
    """
    workdir = os.path.abspath(workdir)
    info = workdir_lib.read_run_info(workdir)
    if info.get("task") != TASK:
        task = info.get("task", "diffusion")
        raise ValueError(
            f"{workdir} is not a super-resolution run: it is a {task} run (config.task="
            f"{task!r}); train one with config.task='super_resolution' (configs/scenes_sr.py)."
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shape = tuple(info["image_shape"])

    def read(ckpt, at_step):
        config = config_from_dict(ckpt.read_config(at_step))
        module = build_stage(config, shape[-1])
        abstract = jax.eval_shape(_init_params_fn(module, shape), jax.random.key(0))
        target = jax.tree.map(lambda a: a.update(sharding=device), abstract)
        params = ckpt.restore_partial({"ema_params": target}, at_step)["ema_params"]
        schedule = from_config.build_schedule(config.diffusion)
        return _stage(config, module, params, schedule, shape)

    return workdir_lib.read_checkpoint(workdir, step, read)
