"""The config-driven training run behind train.py: data, model, engine, logs, sample grids.

This is the one place that sees the config, the data, the model and the checkpoints
together; everything it calls takes typed arguments.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from jaxdiff import training
from jaxdiff.experiment import from_config, images, run_loop
from jaxdiff.experiment import latent as latent_lib
from jaxdiff.experiment import text as text_lib
from jaxdiff.experiment import workdir as workdir_lib
from jaxdiff.experiment.autoencoder_run import train_autoencoder
from jaxdiff.experiment.classifier_run import train_classifier
from jaxdiff.experiment.config import validate_config
from jaxdiff.experiment.sampling import Generator
from jaxdiff.experiment.text_sampling import TextGenerator
from jaxdiff.training.text_conditioning import INPUT_IDS, TokenizeCaptions


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Writes checkpoints/, config.json, run_info.json, TensorBoard event files and
    samples/step_N.png (see :mod:`jaxdiff.experiment.workdir`).

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    validate_config(config)
    if config.task == "autoencoder":
        return train_autoencoder(config, workdir)
    if config.task == "classifier":
        return train_classifier(config, workdir)
    if config.task == "clip":
        from jaxdiff.experiment.clip_run import train_clip

        return train_clip(config, workdir)
    if config.task == "super_resolution":
        from jaxdiff.experiment.super_resolution_run import train_super_resolution

        return train_super_resolution(config, workdir)
    workdir = workdir_lib.check_workdir(workdir)
    dataset = from_config.open_dataset(config.data)
    latent = None  # config.latent: the frozen VAE whose latents are the data
    if config.latent.vae is not None:
        latent = latent_lib.open_latent_space(config, dataset, workdir)
        config = latent.resolved_config(config)
    shape = dataset.image_shape if latent is None else latent.shape
    diffusion_config = config.diffusion
    model = from_config.build_model(
        config.model,
        num_classes=dataset.num_classes,
        image_channels=shape[-1],
        learned_variance=diffusion_config.learned_variance,
    )
    schedule = from_config.build_schedule(diffusion_config)
    text = text_lib.is_text_conditioned(config)
    if text:  # the U-Net reads captions through a text encoder
        model = text_lib.model_for_training(config, model, dataset.builder, workdir)
    if jax.process_index() == 0:
        workdir_lib.write_run_files(
            workdir,
            config,
            image_shape=shape,
            num_classes=model.num_classes or 0,
            extra=None if latent is None else latent.run_info(),
        )
    os.makedirs(os.path.join(workdir, workdir_lib.SAMPLES), exist_ok=True)

    mesh = training.make_mesh(fsdp=config.train.fsdp)
    optimizer, lr = from_config.build_optimizer(config)
    init_fn = training.make_init_fn(from_config.init_params_fn(model, shape), optimizer)
    k_init, k_train = jax.random.split(jax.random.key(config.seed))
    state, shardings = training.init_sharded_state(init_fn, k_init, mesh)
    train_step = from_config.build_train_step(config, model, schedule, optimizer, lr)
    if latent is not None:
        state, shardings = latent.add_to_state(state, shardings, mesh)
        train_step = latent.wrap_train_step(train_step)
    step_fn = training.jit_train_step(train_step, mesh, shardings)
    extra = {"prompts": config.text.sample_prompts} if text else {}
    generator = (TextGenerator if text else Generator)(
        model,
        None,
        schedule,
        **extra,
        objective=diffusion_config.objective,
        prediction_type=diffusion_config.prediction_type,
        sigma_data=diffusion_config.sigma_data,
        image_shape=shape,
        learned_variance=diffusion_config.learned_variance,
        decoder=None if latent is None else latent.decoder(mesh),
    )
    return _run_loop(config, workdir, dataset, generator, step_fn, state, k_train, mesh, latent)


def _run_loop(config, workdir, dataset, generator, step_fn, state, key, mesh, latent=None):
    pipeline = run_loop.training_pipeline(
        config,
        dataset,
        with_index=latent is not None,
        transform=_caption_transform(generator),
    )
    if latent is not None:
        pipeline = latent.wrap_pipeline(pipeline)  # cached moments instead of images
    keep = ("image", "moments", "label") if generator.num_classes else ("image", "moments")
    keep += (INPUT_IDS,) if isinstance(generator, TextGenerator) else ()

    def put_batch(batch):
        return training.global_batch({k: v for k, v in batch.items() if k in keep}, mesh)

    def evaluate(step, state):  # the sample grid of config.sample
        path = os.path.join(workdir, workdir_lib.SAMPLES, f"step_{step}.png")
        draw_sample_grid(generator, config.sample, state.ema_params, path)
        return {}, {}

    return run_loop.run_training(
        config, workdir, pipeline=pipeline, step_fn=step_fn, state=state, key=key,
        put_batch=put_batch, evaluate=evaluate, loss_format=".4f",
    )  # fmt: skip


def _caption_transform(generator) -> TokenizeCaptions | None:
    """Host-side tokenization of the captions in the pipeline (text-conditioned runs)."""
    if not isinstance(generator, TextGenerator):
        return None
    return TokenizeCaptions(generator.model.conditioner.tokenize)


def draw_sample_grid(
    generator: Generator, sample_config: ml_collections.ConfigDict, params: Any, path: str
) -> None:
    """The run's sample grid of ``config.sample`` (classes 0, 1, 2, ... cycling, or the
    prompts of ``config.text.sample_prompts``) as a PNG."""
    samples, conditions = generator.sample(
        params=params,
        num_samples=sample_config.num_samples,
        sampler=sample_config.sampler,
        num_steps=sample_config.num_steps,
        guidance_scale=sample_config.guidance_scale,
        seed=sample_config.seed,
        batch_size=sample_config.num_samples,
        options=dict(sample_config.options),
        progress=False,
    )
    prompts = conditions if isinstance(generator, TextGenerator) else None
    images.save_sample_grid(samples, path, num_classes=generator.num_classes, prompts=prompts)
