"""The ``config.task = "autoencoder"`` run behind train.py, and reading its workdir back.

The same engine and workdir as a diffusion run (checkpoints/ with exact resume, config.json,
run_info.json, TensorBoard event files), with reconstruction grids instead of sample grids:
``samples/step_N.png`` shows held-out images (the "test" split when the dataset has one, else
the first images of the training split) next to their reconstructions from the EMA
parameters (posterior mean), and TensorBoard gets their PSNR and KL per latent element
(``eval/psnr``, ``eval/kl_per_dim``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import models, training
from jaxdiff.experiment import autoencoder as ae_lib
from jaxdiff.experiment import from_config, images, run_loop
from jaxdiff.experiment import workdir as workdir_lib
from jaxdiff.experiment.config import config_from_dict

TASK = "autoencoder"
"""run_info.json's ``task`` entry in an autoencoder workdir."""


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train the VAE of ``config.autoencoder`` in ``workdir`` (resuming if it holds
    checkpoints); ``config`` is validated already (see ``train_and_evaluate``).

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    workdir = workdir_lib.check_workdir(workdir)
    dataset = from_config.open_dataset(config.data)
    module = ae_lib.build_autoencoder(config.autoencoder, image_channels=dataset.image_shape[-1])
    ae_lib.check_image_size(module, dataset.image_shape)
    discriminator = ae_lib.build_discriminator(config.autoencoder)
    if jax.process_index() == 0:
        workdir_lib.write_run_files(
            workdir,
            config,
            image_shape=dataset.image_shape,
            num_classes=dataset.num_classes or 0,
            extra={"task": TASK},
        )
    os.makedirs(os.path.join(workdir, workdir_lib.SAMPLES), exist_ok=True)

    mesh = training.make_mesh(fsdp=config.train.fsdp)
    optimizer, lr = from_config.build_optimizer(config)
    # Built first: it imports config.autoencoder.perceptual_fn (a bad name fails here).
    train_step = ae_lib.build_train_step(config, module, discriminator, optimizer, lr)
    init_fn = ae_lib.build_init_fn(module, discriminator, dataset.image_shape, optimizer)
    k_init, k_train = jax.random.split(jax.random.key(config.seed))
    state, shardings = training.init_sharded_state(init_fn, k_init, mesh)
    step_fn = training.jit_train_step(train_step, mesh, shardings)
    held_out = held_out_images(dataset, config.data, config.autoencoder.eval_images)
    return _run_loop(config, workdir, dataset, module, held_out, step_fn, state, k_train, mesh)


def held_out_images(
    dataset: from_config.ImageDataset, data_config: ml_collections.ConfigDict, n: int
) -> np.ndarray:
    """The first ``n`` images of the "test" split (else of ``config.data.split``)."""
    return held_out_batch(dataset, data_config, n)["image"]


def held_out_batch(
    dataset: from_config.ImageDataset, data_config: ml_collections.ConfigDict, n: int
) -> dict[str, np.ndarray]:
    """The first ``n`` examples (images, labels, ...) of the "test" split (else of
    ``config.data.split``), or all of them when the split is smaller."""
    splits = data_lib.dataset_metadata(dataset.builder).split_sizes
    split = "test" if "test" in splits else data_config.split
    pipeline = data_lib.make_pipeline(
        dataset.builder,
        split=split,
        global_batch_size=min(n, splits[split]),
        image_size=data_config.image_size,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        process_index=0,
        process_count=1,
    )
    return next(pipeline)


def _run_loop(config, workdir, dataset, module, held_out, step_fn, state, key, mesh):
    reconstruct = jax.jit(lambda p, x: module.apply({"params": p}, x))

    def evaluate(step, state):  # held-out reconstructions: PSNR, KL per dimension, a grid
        rec, posterior = jax.device_get(reconstruct(state.ema_params, held_out))
        scalars = {
            "eval/psnr": float(np.mean(ae_lib.psnr(held_out, rec))),
            "eval/kl_per_dim": float(np.mean(posterior.kl()) / posterior.mean[0].size),
        }
        if jax.process_index() == 0:
            path = os.path.join(workdir, workdir_lib.SAMPLES, f"step_{step}.png")
            save_reconstruction_grid(held_out, rec, path)
        return scalars, {}

    return run_loop.run_training(
        config, workdir, pipeline=run_loop.training_pipeline(config, dataset), step_fn=step_fn,
        state=state, key=key, evaluate=evaluate, desc="train vae",
        put_batch=lambda b: training.global_batch({"image": b["image"]}, mesh),
    )  # fmt: skip


def save_reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, path: str):
    """A PNG of image / reconstruction pairs side by side, 8 pairs per row."""
    pairs = np.stack([originals, np.clip(reconstructions, -1, 1)], axis=1)
    pairs = pairs.reshape(-1, *originals.shape[1:])
    scale = max(1, images.GRID_TARGET_PIXELS // originals.shape[1])
    images.save_image_grid(pairs, path, ncol=min(16, len(pairs)), scale=scale)


def load_autoencoder_workdir(
    workdir: str, *, step: int | None = None
) -> tuple[models.AutoencoderKL, Any, int]:
    """The EMA parameters of an autoencoder workdir with the module they were trained as.

    Without ``step`` the newest readable checkpoint is used (a damaged newer one is skipped
    with a warning); a given ``step`` that is missing or damaged raises one ValueError.

    Returns:
      (module, params, step).
    """
    workdir = os.path.abspath(workdir)
    info = workdir_lib.read_run_info(workdir)
    if info.get("task") != TASK:
        task = info.get("task", "diffusion")
        raise ValueError(
            f"{workdir} is not an autoencoder run: it is a {task} run (config.task={task!r})."
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with training.Checkpointer(
        os.path.join(workdir, workdir_lib.CHECKPOINTS), read_only=True
    ) as ckpt:

        def read(at_step: int):
            config = config_from_dict(ckpt.read_config(at_step))
            module = ae_lib.build_autoencoder(
                config.autoencoder, image_channels=info["image_shape"][-1]
            )
            shape = tuple(info["image_shape"])
            abstract = jax.eval_shape(ae_lib.init_params_fn(module, shape), jax.random.key(0))
            target = jax.tree.map(lambda a: a.update(sharding=device), abstract)
            params = ckpt.restore_partial({"ema_params": target}, at_step)["ema_params"]
            return module, params, at_step

        if step is not None:
            return ckpt.read_step(step, read)
        if not ckpt.all_steps():
            raise ValueError(f"{workdir} has no checkpoint yet.")
        out = ckpt.newest_readable(read)
    if out is None:
        raise ValueError(f"{workdir} has no readable checkpoint (see the warnings above).")
    return out
