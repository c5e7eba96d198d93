"""The config-driven training run behind train.py: data, model, engine, logs, sample grids.

This is the one place that sees the config, the data, the model and the checkpoints
together; everything it calls takes typed arguments.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import training
from jaxdiff.experiment import builders, sampling
from jaxdiff.experiment.config import validate_config


def check_workdir(workdir: str) -> str:
    """Create the workdir (or accept an existing folder); a file there is refused."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir {path} is a file; it must be a directory (new or existing).")
    os.makedirs(path, exist_ok=True)
    return path


class Components:
    """Everything a run builds from its config (also used by sample.py)."""

    def __init__(self, config: ml_collections.ConfigDict):
        validate_config(config)
        self.config = config
        d = config.data
        builder_kwargs = {"path": d.path} if d.name == "image_folder" else {}
        self.builder = data_lib.get_builder(
            d.name, data_dir=d.data_dir, download=d.download, **builder_kwargs
        )
        self.meta = data_lib.dataset_metadata(self.builder)
        shape = self.meta.image_shape
        if d.image_size is not None:
            shape = (d.image_size, d.image_size, shape[-1])
        if None in shape:
            raise ValueError(
                f"Dataset {d.name!r} has images of varying size; set config.data.image_size."
            )
        self.image_shape = tuple(int(s) for s in shape)
        self.model = builders.build_model(config.model, num_classes=self.meta.num_classes)
        self.conditional = bool(self.model.num_classes)
        self.schedule = builders.build_schedule(config.diffusion)

    def init_params(self, key: jax.Array) -> Any:
        """Fresh model parameters."""
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32) if self.conditional else None
        return self.model.init({"params": key}, x, jnp.zeros((1,)), labels=labels)["params"]

    def generate_fn(self, **overrides: Any):
        """The jitted sampling function of this model (config.sample, with overrides)."""
        s = {**self.config.sample.to_dict(), **overrides}
        guided = self.conditional and s["guidance_scale"] != 1.0
        return builders.make_generate_fn(
            self.model,
            self.schedule,
            objective=self.config.diffusion.objective,
            prediction_type=self.config.diffusion.prediction_type,
            sigma_data=self.config.diffusion.sigma_data,
            sampler=s["sampler"],
            num_steps=s["num_steps"],
            options=dict(s["options"]),
            guided=guided,
        )


def _train_step(c: Components, optimizer, lr):
    config = c.config
    d = config.diffusion
    loss_fn = training.make_diffusion_loss_fn(
        c.model.apply,
        schedule=c.schedule,
        objective=d.objective,
        prediction_type=d.prediction_type,
        weighting=d.weighting,
        weighting_options={
            "min_snr_gamma": d.min_snr_gamma,
            "p2_k": d.p2_k,
            "p2_gamma": d.p2_gamma,
            "sigma_data": d.sigma_data,
        },
        cond_drop_prob=config.train.cond_drop_prob if c.conditional else 0.0,
        null_label=c.model.num_classes if c.conditional else None,
    )
    e = config.ema
    ema = training.ema_decay_schedule(
        decay=e.decay,
        half_life_images=e.half_life_images,
        batch_size=config.data.global_batch_size,
        warmup=e.warmup,
    )
    return training.make_train_step(
        loss_fn,
        optimizer,
        ema_decay_fn=ema,
        grad_accum_steps=config.optim.grad_accum_steps,
        learning_rate_fn=lr,
    )


def sample_grid(c: Components, generate, params, *, num_samples: int, seed: int, path: str):
    """Draw the config's sample grid (labels 0, 1, 2, ... cycling) and save it as a PNG."""
    keys = builders.per_sample_keys(seed, 0, num_samples)
    noise = builders.per_sample_noise(keys, c.image_shape)
    labels = None
    if c.conditional:
        labels = jnp.arange(num_samples, dtype=jnp.int32) % c.model.num_classes
    scale = jnp.float32(c.config.sample.guidance_scale)
    images = np.asarray(generate(params, noise, keys, labels, scale))
    ncol = c.model.num_classes if c.conditional and c.model.num_classes <= 16 else None
    upscale = max(1, 64 // c.image_shape[0])
    builders.save_image_grid(images, path, ncol=ncol, scale=upscale)
    return images


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Writes checkpoints/, config.json, TensorBoard event files and samples/step_N.png.
    Returns the final metrics and paths.
    """
    from tensorboardX import SummaryWriter
    from tqdm.auto import tqdm

    validate_config(config)
    workdir = check_workdir(workdir)
    c = Components(config)
    t = config.train
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        sampling.write_run_info(
            workdir, image_shape=c.image_shape, num_classes=c.model.num_classes or 0
        )
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

    mesh = training.make_mesh(fsdp=t.fsdp)
    optimizer, lr = builders.build_optimizer(config)
    init_fn = training.make_init_fn(c.init_params, optimizer)
    key = jax.random.key(config.seed)
    k_init, k_train = jax.random.split(key)
    state, shardings = training.init_sharded_state(init_fn, k_init, mesh)
    step_fn = training.jit_train_step(_train_step(c, optimizer, lr), mesh, shardings)

    d = config.data
    pipeline = data_lib.make_pipeline(
        c.builder,
        split=d.split,
        global_batch_size=d.global_batch_size,
        image_size=d.image_size,
        seed=config.seed,
        random_flip=d.random_flip,
        worker_count=d.worker_count,
    )
    keep = ("image", "label") if c.conditional else ("image",)

    def put_batch(batch):
        batch = {k: v for k, v in batch.items() if k in keep}
        return training.global_batch(batch, mesh)

    checkpointer = training.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints
    )
    start = checkpointer.latest_step() or 0
    writer = SummaryWriter(workdir) if jax.process_index() == 0 else None
    generate = c.generate_fn()
    show = t.progress and jax.process_index() == 0
    bar = tqdm(total=t.num_steps, initial=start, disable=not show, desc="train", unit="step")
    clock = {"time": time.perf_counter(), "step": start}

    def on_log(step, means, state):
        now = time.perf_counter()
        rate = (step - clock["step"]) * d.global_batch_size / max(now - clock["time"], 1e-9)
        clock.update(time=now, step=step)
        bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", img_s=f"{rate:.0f}")
        if writer is not None:
            for name, value in means.items():
                writer.add_scalar(f"train/{name}", value, step)
            writer.add_scalar("train/images_per_sec", rate, step)
            writer.flush()
        if (t.sample_every and step % t.sample_every == 0) or step == t.num_steps:
            path = os.path.join(workdir, "samples", f"step_{step}.png")
            sample_grid(
                c,
                generate,
                state.ema_params,
                num_samples=config.sample.num_samples,
                seed=config.sample.seed,
                path=path,
            )
            clock["time"] = time.perf_counter()  # sampling is not training throughput

    try:
        result = training.train_loop(
            step_fn,
            state,
            pipeline,
            num_steps=t.num_steps,
            key=k_train,
            checkpointer=checkpointer,
            save_every=t.save_every,
            log_every=t.log_every,
            put_batch=put_batch,
            callbacks=[on_log],
            on_step=lambda step: bar.update(1),
            config=config.to_dict(),
        )
    finally:
        bar.close()
        checkpointer.close()
        if writer is not None:
            writer.close()
    return {"step": result.step, "workdir": workdir, "preempted": result.preempted}
