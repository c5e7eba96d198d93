"""The ``config.task = "classifier"`` run behind train.py, and reading its workdir back.

A noisy classifier (`models.NoisyClassifier` with the fields of ``config.classifier.kwargs``)
learns p(y | x_t) of the dataset's labels from training images noised by the discrete
schedule of ``config.diffusion`` at uniformly drawn timesteps
(`training.make_classifier_loss_fn`): the classifier of classifier guidance, which must read
the noise of the model it guides. The same engine and workdir as a diffusion run
(checkpoints/ with exact resume, config.json, run_info.json with ``"task": "classifier"``,
TensorBoard event files, the progress bar), without image grids: every
``config.train.sample_every`` steps and at the end, TensorBoard gets the EMA parameters'
accuracy on held-out images (the "test" split when the dataset has one, else the first images
of the training split), noised with fixed noise at each timestep of
``config.classifier.eval_timesteps`` (``eval/accuracy_t<t>``), and its mean over them
(``eval/accuracy``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import diffusion, models, training
from jaxdiff.experiment import from_config, run_loop
from jaxdiff.experiment import workdir as workdir_lib
from jaxdiff.experiment.autoencoder_run import held_out_batch
from jaxdiff.experiment.config import config_from_dict
from jaxdiff.schedules import DiscreteSchedule
from jaxdiff.training.step import LossFn

TASK = "classifier"
"""run_info.json's ``task`` entry in a classifier workdir."""
EVAL_NOISE_SALT = 0xC1A55
"""Folded into ``config.seed`` for the fixed noise of the held-out accuracy."""


def build_classifier(
    classifier_config: Mapping[str, Any], *, num_classes: int | None
) -> models.NoisyClassifier:
    """The `NoisyClassifier` of ``config.classifier.kwargs`` for a dataset of ``num_classes``.

    ``num_outputs`` defaults to the dataset's classes; another value, a dataset without
    labels, class conditioning of the trunk (``num_classes``) and unknown fields are refused
    with what is allowed.
    """
    kwargs = dict(classifier_config["kwargs"])
    fields = {f.name for f in dataclasses.fields(models.NoisyClassifier)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"Unknown NoisyClassifier field(s) {unknown} in config.classifier.kwargs; fields: "
            f"{', '.join(sorted(fields - {'num_classes'}))}."
        )
    if kwargs.get("num_classes"):
        raise ValueError(
            f"config.classifier.kwargs.num_classes={kwargs['num_classes']} would condition the "
            "classifier on the class it predicts; allowed: None (the classes are num_outputs)."
        )
    if not num_classes:
        raise ValueError(
            "config.task='classifier' needs a dataset with labels; config.data names one "
            "without (allowed: a labelled dataset such as digits)."
        )
    outputs = kwargs.setdefault("num_outputs", num_classes)
    if outputs != num_classes:
        raise ValueError(
            f"config.classifier.kwargs.num_outputs={outputs} but the dataset has {num_classes} "
            f"classes; allowed: {num_classes} (or leave it out)."
        )
    # A config read back from JSON holds lists; module fields must be hashable.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return models.NoisyClassifier(**kwargs)
    except ValueError as e:  # the U-Net's own checks of its fields
        raise ValueError(f"config.classifier.kwargs: {e}") from None


def init_params_fn(
    module: models.NoisyClassifier, image_shape: tuple[int, ...]
) -> Callable[[jax.Array], Any]:
    """``key -> fresh parameters`` of the classifier for images of ``image_shape``."""

    def init(key):
        x = jnp.zeros((1, *image_shape), jnp.float32)
        return module.init({"params": key}, x, jnp.zeros((1,)))["params"]

    return init


def check_classifier(module: models.NoisyClassifier, image_shape: tuple[int, ...]) -> None:
    """Trace the classifier's init on the images (no compile): inconsistent fields raise one
    ValueError naming config.classifier.kwargs."""
    try:
        jax.eval_shape(init_params_fn(module, image_shape), jax.random.key(0))
    except ValueError as e:
        raise ValueError(f"config.classifier.kwargs: {e}") from None


def build_loss_fn(
    config: ml_collections.ConfigDict, module: models.NoisyClassifier, schedule: DiscreteSchedule
) -> LossFn:
    """The per-example loss of ``config.classifier`` (noised at uniform timesteps)."""
    return training.make_classifier_loss_fn(
        module.apply, schedule=schedule, max_timestep=config.classifier.max_timestep
    )


def make_accuracy_fn(
    module: models.NoisyClassifier,
    schedule: DiscreteSchedule,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    timesteps: Sequence[int],
    key: jax.Array,
) -> Callable[[Any], dict[int, float]]:
    """``accuracy(params) -> {t: accuracy}`` on ``images`` noised to each timestep ``t``.

    The noise is drawn once from ``key`` and shared by every t (only its level changes), so
    the numbers of successive evaluations are comparable.
    """
    x0 = jnp.asarray(images, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    noise = jax.random.normal(key, x0.shape, jnp.float32)

    @jax.jit
    def at(params, t):
        tt = jnp.full((x0.shape[0],), t, jnp.int32)
        x_t = diffusion.q_sample(x0, noise, schedule.alpha(tt), schedule.sigma(tt))
        logits = module.apply({"params": params}, x_t, tt.astype(jnp.float32))
        return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))

    def accuracy(params):
        return {int(t): float(at(params, jnp.int32(t))) for t in timesteps}

    return accuracy


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train the noisy classifier of ``config.classifier`` in ``workdir`` (resuming if it
    holds checkpoints); ``config`` is validated already (see ``train_and_evaluate``).

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    workdir = workdir_lib.check_workdir(workdir)
    dataset = from_config.open_dataset(config.data)
    module = build_classifier(config.classifier, num_classes=dataset.num_classes)
    check_classifier(module, dataset.image_shape)
    schedule = from_config.build_schedule(config.diffusion)
    if jax.process_index() == 0:
        workdir_lib.write_run_files(
            workdir,
            config,
            image_shape=dataset.image_shape,
            num_classes=dataset.num_classes,
            extra={"task": TASK},
        )
    state, step_fn, k_train, mesh = from_config.sharded_training(
        config, init_params_fn(module, dataset.image_shape), build_loss_fn(config, module, schedule)
    )
    held_out = held_out_batch(dataset, config.data, config.classifier.eval_images)
    accuracy = make_accuracy_fn(
        module,
        schedule,
        held_out["image"],
        held_out["label"],
        timesteps=config.classifier.eval_timesteps,
        key=jax.random.fold_in(jax.random.key(config.seed), EVAL_NOISE_SALT),
    )
    return _run_loop(config, workdir, dataset, accuracy, step_fn, state, k_train, mesh)


def _run_loop(config, workdir, dataset, accuracy, step_fn, state, key, mesh):
    def evaluate(step, state):  # held-out accuracy of the EMA parameters per noise level
        by_t = accuracy(state.ema_params)
        scalars = {f"eval/accuracy_t{t}": acc for t, acc in by_t.items()}
        scalars["eval/accuracy"] = float(np.mean(list(by_t.values())))
        return scalars, {"eval_acc": f"{scalars['eval/accuracy']:.3f}"}

    def put_batch(b):
        return training.global_batch({"image": b["image"], "label": b["label"]}, mesh)

    return run_loop.run_training(
        config, workdir, pipeline=run_loop.training_pipeline(config, dataset), step_fn=step_fn,
        state=state, key=key, put_batch=put_batch, evaluate=evaluate, desc="train classifier",
    )  # fmt: skip


def load_classifier_workdir(
    workdir: str, *, step: int | None = None
) -> tuple[models.NoisyClassifier, Any, DiscreteSchedule]:
    """The EMA parameters of a classifier workdir, with the module and the noise schedule
    they were trained with (read-only; no optimizer is built).

    Without ``step`` the newest readable checkpoint is used (a damaged newer one is skipped
    with a warning); a given ``step`` that is missing or damaged raises one ValueError, as
    does a workdir of another task.

    Returns:
      (module, params, schedule): ``training.classifier_log_prob(module.apply, params)`` is
      the ``log_prob_fn`` of ``jaxdiff.classifier_guidance(..., schedule=schedule)``.
    """
    workdir = os.path.abspath(workdir)
    info = workdir_lib.read_run_info(workdir)
    if info.get("task") != TASK:
        task = info.get("task", "diffusion")
        raise ValueError(
            f"{workdir} is not a classifier run: it is a {task} run (config.task={task!r}); "
            "train a classifier with config.task='classifier' (configs/digits_classifier.py)."
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shape = tuple(info["image_shape"])

    def read(ckpt, at_step):
        config = config_from_dict(ckpt.read_config(at_step))
        module = build_classifier(config.classifier, num_classes=info["num_classes"])
        abstract = jax.eval_shape(init_params_fn(module, shape), jax.random.key(0))
        target = jax.tree.map(lambda a: a.update(sharding=device), abstract)
        params = ckpt.restore_partial({"ema_params": target}, at_step)["ema_params"]
        return module, params, from_config.build_schedule(config.diffusion)

    return workdir_lib.read_checkpoint(workdir, step, read)
