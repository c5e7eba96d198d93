"""The ``config.task = "clip"`` run behind train.py, and reading its workdir back.

A small noise-aware CLIP (`models.SmallCLIP`) learns a joint embedding of the dataset's
images and captions: the image tower is a `NoisyClassifier` trunk (the fields of
``config.clip.kwargs``, ``num_outputs`` = ``config.clip.embed_dim``) reading images noised by
the discrete schedule of ``config.diffusion`` at uniformly drawn timesteps, the text tower the
`SmallTextEncoder` of ``config.text`` (``encoder="small"``) over a `WordTokenizer` of the
training captions (``tokenizer.json`` in the workdir), trained with CLIP's contrastive loss
(`training.make_clip_loss_fn`; captions equal up to number words are positives of each other).
It is the CLIP of CLIP guidance (``sample.py --clip_workdir``), and must read the noise of the
model it guides.

The workdir is a diffusion run's (checkpoints/ with exact resume, config.json, run_info.json
with ``"task": "clip"``, TensorBoard, the progress bar), without image grids: every
``config.train.sample_every`` steps and at the end TensorBoard gets the EMA parameters'
held-out retrieval accuracy (each held-out image's most similar caption among the held-out
captions is one of its own) at each timestep of ``config.clip.eval_timesteps``
(``eval/accuracy_t<t>``) and its mean (``eval/accuracy``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import diffusion, models, training
from jaxdiff.experiment import from_config, run_loop
from jaxdiff.experiment import text as text_lib
from jaxdiff.experiment import workdir as workdir_lib
from jaxdiff.experiment.autoencoder_run import held_out_batch
from jaxdiff.experiment.config import config_from_dict
from jaxdiff.models.small_clip import SmallCLIP
from jaxdiff.schedules import DiscreteSchedule
from jaxdiff.training.clip_objective import (
    CAPTION_GROUP,
    GroupCaptions,
    caption_groups,
    contrastive_loss,
    make_clip_loss_fn,
)
from jaxdiff.training.text_conditioning import INPUT_IDS, TokenizeCaptions

TASK = "clip"
"""run_info.json's ``task`` entry in a CLIP workdir."""
EVAL_NOISE_SALT = 0xC11F
"""Folded into ``config.seed`` for the fixed noise of the held-out accuracy."""


def build_clip(config: ml_collections.ConfigDict, tokenizer: Any) -> SmallCLIP:
    """The `SmallCLIP` of ``config.clip`` (image tower) and ``config.text`` (text tower).

    Unknown image-tower fields, class conditioning, a ``num_outputs`` other than
    ``embed_dim`` and a text encoder other than "small" are refused with what is allowed.
    """
    kwargs = dict(config.clip.kwargs)
    fields = {f.name for f in dataclasses.fields(models.NoisyClassifier)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"Unknown image-tower field(s) {unknown} in config.clip.kwargs; fields: "
            f"{', '.join(sorted(fields - {'num_classes', 'num_outputs'}))}."
        )
    embed_dim = config.clip.embed_dim
    if kwargs.get("num_classes"):
        raise ValueError("config.clip.kwargs.num_classes must be None (the towers read captions).")
    if kwargs.setdefault("num_outputs", embed_dim) != embed_dim:
        raise ValueError(
            f"config.clip.kwargs.num_outputs={kwargs['num_outputs']} but config.clip.embed_dim="
            f"{embed_dim}; allowed: {embed_dim} (or leave it out)."
        )
    if config.text.encoder != "small":
        raise ValueError(
            f"config.task='clip' trains its text tower: set config.text.encoder='small' (got "
            f"{config.text.encoder!r})."
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        image_tower = models.NoisyClassifier(**kwargs)
    except ValueError as e:
        raise ValueError(f"config.clip.kwargs: {e}") from None
    text_tower = text_lib.small_encoder(config.text, tokenizer).module
    return SmallCLIP(
        image_tower, text_tower, embed_dim=embed_dim, patch_size=config.clip.patch_size
    )


def init_params_fn(
    module: SmallCLIP, image_shape: tuple[int, ...], max_length: int
) -> Callable[[jax.Array], Any]:
    """``key -> fresh parameters`` of the CLIP for images of ``image_shape``."""

    def init(key):
        x = jnp.zeros((1, *image_shape), jnp.float32)
        ids = jnp.ones((1, max_length), jnp.int32)
        return module.init({"params": key}, x, jnp.zeros((1,)), ids)["params"]

    return init


def make_accuracy_fn(
    module: SmallCLIP,
    schedule: DiscreteSchedule,
    images: np.ndarray,
    input_ids: np.ndarray,
    groups: np.ndarray,
    *,
    timesteps: Sequence[int],
    key: jax.Array,
) -> Callable[[Any], dict[int, float]]:
    """``accuracy(params) -> {t: retrieval accuracy}`` of the held-out images noised to each
    ``t`` (one fixed noise draw for every t) against the held-out captions."""
    x0 = jnp.asarray(images, jnp.float32)
    ids, group = jnp.asarray(input_ids), jnp.asarray(groups)
    noise = jax.random.normal(key, x0.shape, jnp.float32)

    @jax.jit
    def at(params, t):
        tt = jnp.full((x0.shape[0],), t, jnp.int32)
        x_t = diffusion.q_sample(x0, noise, schedule.alpha(tt), schedule.sigma(tt))
        image, text, scale = module.apply({"params": params}, x_t, tt.astype(jnp.float32), ids)
        return jnp.mean(contrastive_loss(image, text, scale, group)[1])

    def accuracy(params):
        return {int(t): float(at(params, jnp.int32(t))) for t in timesteps}

    return accuracy


def train_clip(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train the CLIP of ``config.clip`` / ``config.text`` in ``workdir`` (resuming if it
    holds checkpoints); ``config`` is validated already (see ``train_and_evaluate``).

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    workdir = workdir_lib.check_workdir(workdir)
    dataset = from_config.open_dataset(config.data)
    captions = text_lib.read_captions(dataset.builder, config.data.split)
    tokenizer = text_lib.workdir_tokenizer(captions, config.text.max_length, workdir)
    module = build_clip(config, tokenizer)
    init_params = init_params_fn(module, dataset.image_shape, tokenizer.max_length)
    try:
        jax.eval_shape(init_params, jax.random.key(0))
    except ValueError as e:
        raise ValueError(f"config.clip / config.text: {e}") from None
    schedule = from_config.build_schedule(config.diffusion)
    if jax.process_index() == 0:
        workdir_lib.write_run_files(
            workdir, config, image_shape=dataset.image_shape, num_classes=None,
            extra={"task": TASK},
        )  # fmt: skip
    loss_fn = make_clip_loss_fn(
        module.apply, schedule=schedule, max_timestep=config.clip.max_timestep
    )
    state, step_fn, k_train, mesh = from_config.sharded_training(config, init_params, loss_fn)
    held_out = held_out_batch(dataset, config.data, config.clip.eval_images)
    accuracy = make_accuracy_fn(
        module,
        schedule,
        held_out["image"],
        tokenizer([str(c) for c in held_out["caption"]]),
        caption_groups(held_out["caption"]),
        timesteps=config.clip.eval_timesteps,
        key=jax.random.fold_in(jax.random.key(config.seed), EVAL_NOISE_SALT),
    )

    def evaluate(step, state):  # held-out retrieval accuracy of the EMA parameters per t
        by_t = accuracy(state.ema_params)
        scalars = {f"eval/accuracy_t{t}": acc for t, acc in by_t.items()}
        scalars["eval/accuracy"] = float(np.mean(list(by_t.values())))
        return scalars, {"eval_acc": f"{scalars['eval/accuracy']:.3f}"}

    tokenize, group = TokenizeCaptions(tokenizer), GroupCaptions()
    keys = ("image", INPUT_IDS, CAPTION_GROUP)

    def put_batch(b):
        return training.global_batch({k: b[k] for k in keys}, mesh)

    pipeline = run_loop.training_pipeline(config, dataset, transform=_Chain(tokenize, group))
    return run_loop.run_training(
        config, workdir, pipeline=pipeline, step_fn=step_fn, state=state, key=k_train,
        put_batch=put_batch, evaluate=evaluate, desc="train clip",
    )  # fmt: skip


class _Chain:
    """Data-pipeline transforms applied in turn (picklable when they are)."""

    def __init__(self, *transforms: Callable[[dict], dict]):
        self.transforms = transforms

    def __call__(self, batch: dict) -> dict:
        for transform in self.transforms:
            batch = transform(batch)
        return batch


def load_clip_workdir(
    workdir: str, *, step: int | None = None
) -> tuple[SmallCLIP, Any, DiscreteSchedule, Any]:
    """The EMA parameters of a CLIP workdir, with the module, the noise schedule it was
    trained with and its tokenizer (read-only; no optimizer is built).

    Without ``step`` the newest readable checkpoint is used (a damaged newer one is skipped
    with a warning); a given ``step`` that is missing or damaged raises one ValueError, as
    does a workdir of another task.

    Returns:
      (module, params, schedule, tokenizer).
    """
    from jaxdiff.text import WordTokenizer

    workdir = os.path.abspath(workdir)
    info = workdir_lib.read_run_info(workdir)
    if info.get("task") != TASK:
        task = info.get("task", "diffusion")
        raise ValueError(
            f"{workdir} is not a CLIP run: it is a {task} run (config.task={task!r}); train "
            "one with config.task='clip' (configs/scenes_clip.py)."
        )
    path = os.path.join(workdir, text_lib.TOKENIZER_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{workdir} is a CLIP run but {text_lib.TOKENIZER_FILE} is missing.")
    tokenizer = WordTokenizer.load(path)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shape = tuple(info["image_shape"])

    def read(ckpt, at_step):
        config = config_from_dict(ckpt.read_config(at_step))
        module = build_clip(config, tokenizer)
        init = init_params_fn(module, shape, tokenizer.max_length)
        abstract = jax.eval_shape(init, jax.random.key(0))
        target = jax.tree.map(lambda a: a.update(sharding=device), abstract)
        params = ckpt.restore_partial({"ema_params": target}, at_step)["ema_params"]
        return module, params, from_config.build_schedule(config.diffusion), tokenizer

    return workdir_lib.read_checkpoint(workdir, step, read)
