"""The part every training run shares (diffusion, autoencoder, classifier): the training
split's pipeline, checkpoints, the progress bar, TensorBoard scalars and the periodic
evaluation, around :func:`jaxdiff.training.train_loop`.

A run supplies what differs: its jitted step, how a host batch becomes a global one, and
an ``evaluate(step, state)`` called at every ``config.train.sample_every``-th log step and at
the last step (sample grids, reconstructions, held-out accuracy), which returns scalars for
TensorBoard and values for the progress bar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections

from jaxdiff import data as data_lib
from jaxdiff import training
from jaxdiff.experiment import workdir as workdir_lib

Evaluate = Callable[[int, Any], tuple[Mapping[str, float], Mapping[str, str]]]


def training_pipeline(config: ml_collections.ConfigDict, dataset: Any, **kwargs: Any) -> Iterator:
    """The run's training split as ``jaxdiff.data.make_pipeline`` batches (``config.data``,
    the run's seed); ``kwargs`` add pipeline options (e.g. ``transform``)."""
    data_config = config.data
    return data_lib.make_pipeline(
        dataset.builder,
        split=data_config.split,
        global_batch_size=data_config.global_batch_size,
        image_size=data_config.image_size,
        seed=config.seed,
        random_flip=data_config.random_flip,
        worker_count=data_config.worker_count,
        **kwargs,
    )


def run_training(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    pipeline: Iterator,
    step_fn: Callable,
    state: Any,
    key: jax.Array,
    put_batch: Callable[[dict], Any],
    evaluate: Evaluate | None = None,
    desc: str = "train",
    loss_format: str = ".4g",
) -> dict[str, Any]:
    """Train to ``config.train.num_steps`` (resuming from the workdir's checkpoints).

    Args:
      config: the run's config (its ``train`` section sets steps, saving, logging).
      workdir: the run's directory (checkpoints/, TensorBoard events).
      pipeline: the training batches (e.g. :func:`training_pipeline`).
      step_fn: the jitted train step.
      state: the initial train state (replaced by the checkpoint's when resuming).
      key: the run's training key.
      put_batch: host batch -> the step's (global) batch.
      evaluate: called on due log steps (see the module docstring); None: no evaluation.
      desc: the progress bar's label.
      loss_format: format of the loss in the progress bar.

    Returns:
      ``{"step": steps done, "workdir": path, "preempted": stopped by a signal}``.
    """
    from tensorboardX import SummaryWriter
    from tqdm.auto import tqdm

    train_config = config.train
    checkpointer = training.Checkpointer(
        os.path.join(workdir, workdir_lib.CHECKPOINTS), max_to_keep=train_config.keep_checkpoints
    )
    start = checkpointer.latest_step() or 0
    writer = SummaryWriter(workdir) if jax.process_index() == 0 else None
    show = train_config.progress and jax.process_index() == 0
    bar = tqdm(
        total=train_config.num_steps, initial=start, disable=not show, desc=desc, unit="step"
    )
    clock = {"time": time.perf_counter(), "step": start}
    batch_size = config.data.global_batch_size

    def on_log(step: int, means: Mapping[str, float], state: Any) -> None:
        now = time.perf_counter()
        rate = (step - clock["step"]) * batch_size / max(now - clock["time"], 1e-9)
        clock.update(time=now, step=step)
        scalars = {f"train/{name}": value for name, value in means.items()}
        scalars["train/images_per_sec"] = rate
        postfix = {"loss": format(means.get("loss", float("nan")), loss_format)}
        every = train_config.sample_every
        if evaluate is not None and (
            (every and step % every == 0) or step == train_config.num_steps
        ):
            more_scalars, more_postfix = evaluate(step, state)
            scalars.update(more_scalars)
            postfix.update(more_postfix)
            clock["time"] = time.perf_counter()  # evaluation is not training throughput
        bar.set_postfix(**postfix, img_s=f"{rate:.0f}")
        if writer is not None:
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
            writer.flush()

    try:
        result = training.train_loop(
            step_fn,
            state,
            pipeline,
            num_steps=train_config.num_steps,
            key=key,
            checkpointer=checkpointer,
            save_every=train_config.save_every,
            log_every=train_config.log_every,
            put_batch=put_batch,
            callbacks=[on_log],
            on_step=lambda step: bar.update(step - bar.n),
            config=config.to_dict(),
        )
    finally:
        bar.close()
        checkpointer.close()
        if writer is not None:
            writer.close()
    return {"step": result.step, "workdir": workdir, "preempted": result.preempted}
