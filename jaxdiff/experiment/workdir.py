"""What a training workdir holds, and loading a model from it for sampling.

Layout (written by :func:`jaxdiff.experiment.train_and_evaluate`)::

    checkpoints/<step>/   Orbax: train state, data-iterator state, and the config that
                          trained up to that step
    config.json           the config of the latest invocation (for people: it is rewritten
                          when a run is resumed, possibly with changed flags)
    run_info.json         dataset facts sampling needs without the dataset: image shape and
                          class count (fixed for a workdir: a resume on other data is refused)
    samples/step_N.png    sample grids; generated/ is sample.py's default output
    tokenizer.json        the word tokenizer of a run with a text encoder trained from scratch
                          (config.text.encoder="small"; see jaxdiff.experiment.text)

Sampling reads the config saved in the checkpoint it restores, never config.json, so a
resume with new flags cannot change how an older step is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import ml_collections

from jaxdiff import training
from jaxdiff.experiment import text as text_lib
from jaxdiff.experiment.autoencoder import LatentDecoder, module_from_fields
from jaxdiff.experiment.autoencoder import init_params_fn as ae_init_params_fn
from jaxdiff.experiment.config import config_from_dict
from jaxdiff.experiment.from_config import build_model, build_schedule, init_params_fn
from jaxdiff.experiment.sampling import Generator
from jaxdiff.experiment.text_sampling import TextGenerator

CHECKPOINTS = "checkpoints"
CONFIG_JSON = "config.json"
RUN_INFO = "run_info.json"
SAMPLES = "samples"
T = TypeVar("T")


def check_workdir(workdir: str) -> str:
    """Create the workdir (or accept an existing folder); a file there is refused."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir {path} is a file; it must be a directory (new or existing).")
    os.makedirs(path, exist_ok=True)
    return path


def write_run_files(
    workdir: str,
    config: ml_collections.ConfigDict,
    *,
    image_shape: tuple[int, ...],
    num_classes: int,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write config.json and run_info.json (see the module docstring); refuse a dataset
    whose facts differ from those of the run already in ``workdir``. ``extra`` adds facts
    (JSON values) of autoencoder and latent-diffusion runs."""
    info = {"image_shape": list(image_shape), "num_classes": num_classes, **(extra or {})}
    info = json.loads(json.dumps(info))  # tuples as lists, as read back
    info_path = os.path.join(workdir, RUN_INFO)
    if os.path.exists(info_path) and _has_checkpoints(workdir):
        with open(info_path) as f:
            stored = json.load(f)
        if stored != info:
            raise ValueError(
                f"{workdir} holds a run on images {stored} but this config gives {info}; "
                "use a new --workdir for a run on other data."
            )
    with open(os.path.join(workdir, CONFIG_JSON), "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    with open(info_path, "w") as f:
        json.dump(info, f)


def _has_checkpoints(workdir: str) -> bool:
    ckpts = os.path.join(workdir, CHECKPOINTS)
    return os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))


def read_run_info(workdir: str) -> dict[str, Any]:
    """run_info.json of a training workdir (ValueError if ``workdir`` is not one)."""
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is not a directory.")
    for name in (RUN_INFO, CHECKPOINTS):
        if not os.path.exists(os.path.join(workdir, name)):
            raise ValueError(f"{workdir} is not a training workdir: {name} is missing.")
    with open(os.path.join(workdir, RUN_INFO)) as f:
        return json.load(f)


def read_checkpoint(
    workdir: str, step: int | None, read: Callable[[training.Checkpointer, int], T]
) -> T:
    """``read(checkpointer, step)`` on a workdir's checkpoints, read-only.

    Without ``step`` the newest readable checkpoint is used (a damaged newer one is skipped
    with a warning naming it); a given ``step`` that is missing or damaged, or a workdir
    without a readable checkpoint, raises one ValueError.
    """
    with training.Checkpointer(os.path.join(workdir, CHECKPOINTS), read_only=True) as ckpt:
        if step is not None:
            return ckpt.read_step(step, lambda s: read(ckpt, s))
        if not ckpt.all_steps():
            raise ValueError(f"{workdir} has no checkpoint yet.")
        out = ckpt.newest_readable(lambda s: read(ckpt, s))
    if out is None:
        raise ValueError(f"{workdir} has no readable checkpoint (see the warnings above).")
    return out


def generator_from_config(
    config: ml_collections.ConfigDict,
    info: dict[str, Any],
    params: Any = None,
    workdir: str | None = None,
) -> Generator:
    """The :class:`Generator` of a run's config and dataset facts (``params`` may follow);
    a :class:`TextGenerator` for a text-conditioned run (whose ``workdir`` holds its
    tokenizer)."""
    diffusion_config = config.diffusion
    shape = tuple(info["image_shape"])
    model = build_model(
        config.model,
        num_classes=info["num_classes"] or None,
        image_channels=shape[-1],
        learned_variance=diffusion_config.learned_variance,
    )
    extra = {}
    if text_lib.is_text_conditioned(config):
        model = text_lib.model_for_sampling(config, model, workdir)
        extra = {"prompts": config.text.sample_prompts}
    return (TextGenerator if extra else Generator)(
        model,
        params,
        build_schedule(diffusion_config),
        **extra,
        objective=diffusion_config.objective,
        prediction_type=diffusion_config.prediction_type,
        sigma_data=diffusion_config.sigma_data,
        image_shape=shape,
        learned_variance=diffusion_config.learned_variance,
    )


def load_workdir(workdir: str, *, step: int | None = None) -> Generator:
    """The EMA parameters of a training workdir with the config they were trained with.

    Reads only the EMA parameters (an Orbax partial restore; no optimizer is built). Without
    ``step`` the newest readable checkpoint is used: a damaged newer one is skipped with a
    warning naming it (and left in place). A given ``step`` that is missing or damaged raises
    one ValueError naming it.

    Args:
      workdir: a directory written by :func:`jaxdiff.experiment.train_and_evaluate`.
      step: the checkpoint step (default: the newest readable).

    Returns:
      A :class:`Generator` holding the EMA parameters.
    """
    workdir = os.path.abspath(workdir)
    info = read_run_info(workdir)
    if info.get("task") == "autoencoder":
        raise ValueError(
            f"{workdir} is an autoencoder run (config.task='autoencoder'); sampling needs a "
            "diffusion run (a latent one names this workdir in config.latent.vae)."
        )
    if info.get("task") == "classifier":
        raise ValueError(
            f"{workdir} is a classifier run (config.task='classifier'); sampling needs a "
            "diffusion run (a classifier guides one: --classifier_workdir)."
        )
    if info.get("task") in ("clip", "super_resolution"):
        task = info["task"]
        use = "--clip_workdir" if task == "clip" else "--sr_workdir"
        raise ValueError(
            f"{workdir} is a {task} run (config.task={task!r}); sampling needs a diffusion run "
            f"(sample.py takes this one as {use} after --workdir)."
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with training.Checkpointer(os.path.join(workdir, CHECKPOINTS), read_only=True) as ckpt:

        def read(at_step: int) -> Generator:
            config = config_from_dict(ckpt.read_config(at_step))
            generator = generator_from_config(config, info, workdir=workdir)
            abstract = jax.eval_shape(
                init_params_fn(generator.model, generator.image_shape), jax.random.key(0)
            )
            target = {"ema_params": jax.tree.map(lambda a: a.update(sharding=device), abstract)}
            latent = info.get("latent")  # a latent diffusion run: its checkpoints hold the VAE
            if latent is not None:
                vae = module_from_fields(latent["autoencoder"])
                shape = tuple(latent["image_shape"])
                abstract = jax.eval_shape(ae_init_params_fn(vae, shape), jax.random.key(0))
                target["vae_params"] = jax.tree.map(lambda a: a.update(sharding=device), abstract)
            restored = ckpt.restore_partial(target, at_step)
            generator.params = restored["ema_params"]
            generator.run_sampler = {
                "sampler": config.sample.sampler,
                "options": dict(config.sample.options),
            }
            if latent is not None:
                generator.decoder = LatentDecoder(vae, restored["vae_params"])
            return generator

        if step is not None:
            return ckpt.read_step(step, read)
        if not ckpt.all_steps():
            raise ValueError(f"{workdir} has no checkpoint yet.")
        generator = ckpt.newest_readable(read)
    if generator is None:
        raise ValueError(f"{workdir} has no readable checkpoint (see the warnings above).")
    return generator
