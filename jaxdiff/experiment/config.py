"""The run configuration: its complete schema, defaults and validation.

Config files in ``configs/`` start from :func:`base_config` and change what they need. Every
value is checked by :func:`validate_config` before anything is built or compiled; an unknown
field or a bad value raises a ValueError that names the field and what is allowed. Library
code never sees the ConfigDict: :mod:`jaxdiff.experiment.from_config` turns it into typed
objects at this boundary. :func:`config_from_dict` reads a config saved with a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxdiff import diffusion, losses, samplers, schedules
from jaxdiff.experiment.from_config import build_schedule
from jaxdiff.experiment.sampling import check_sampler, sampler_options, sampler_prediction_type
from jaxdiff.experiment.text import ENCODERS as TEXT_ENCODERS

_PRESETS = ("DIGITS", "TINY", "DDPM_CIFAR10", "ADM_IMAGENET64")


def placeholder(kind: type, value: Any = None) -> Any:
    """An optional field of a known type (so ``--config.x=...`` can set it from None)."""
    ref = ml_collections.config_dict.placeholder(kind)
    if value is not None:
        ref.set(value)
    return ref


def base_config() -> ml_collections.ConfigDict:
    """Every config field with its default (a class-conditional digits run)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # "autoencoder": config.autoencoder; "classifier": config.classifier; "clip": config.clip
    # and config.text; "super_resolution": config.super_resolution and config.model
    c.task = "diffusion"
    c.data = dict(
        name="digits",
        split="train",
        path=placeholder(str),  # the folder of an "image_folder" dataset
        builder_kwargs=ml_collections.ConfigDict(),  # options of a local builder, e.g. seed
        image_size=placeholder(int),  # None keeps the stored size
        global_batch_size=64,
        random_flip=False,
        data_dir=placeholder(str),
        download=False,
        worker_count=0,
    )
    c.model = dict(
        preset="DIGITS",
        dtype="float32",
        kwargs=ml_collections.ConfigDict(),
        patch_size=1,  # > 1: the U-Net runs on p x p pixel patches folded into channels
    )
    c.diffusion = dict(
        objective="diffusion",  # or "edm"
        beta_schedule="linear",
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        rescale_betas_zero_snr=False,
        prediction_type="epsilon",
        weighting="uniform",
        min_snr_gamma=5.0,
        p2_k=1.0,
        p2_gamma=1.0,
        learned_variance=False,  # the model also outputs variance values (hybrid loss)
        vlb_weight=0.001,  # lambda of the hybrid loss (Nichol & Dhariwal 2021)
        sigma_data=0.5,  # EDM
        p_mean=-1.2,
        p_std=1.2,
        sigma_min=0.002,
        sigma_max=80.0,
    )
    c.optim = dict(
        lr=1e-3,
        warmup_steps=100,
        decay="constant",
        final_lr_fraction=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=placeholder(float, 1.0),
        grad_accum_steps=1,
    )
    c.ema = dict(decay=placeholder(float, 0.999), half_life_images=placeholder(float), warmup=True)
    c.train = dict(
        num_steps=3000,
        log_every=100,
        save_every=1000,
        sample_every=1000,
        keep_checkpoints=3,
        cond_drop_prob=0.1,
        fsdp=1,
        progress=True,
    )
    c.text = dict(  # captions -> the U-Net's cross-attention context (jaxdiff.experiment.text)
        encoder="none",  # "none", "small" (trained with the U-Net) or "pretrained" (frozen)
        max_length=placeholder(int),  # None: longest training caption ("small") / tokenizer's
        width=64,  # "small": hidden size = the U-Net's context_dim
        num_layers=2,
        num_heads=4,
        mlp_ratio=4,
        dropout=0.0,
        pretrained_dir=placeholder(str),  # "pretrained": a transformers text-encoder folder
        tokenizer_dir=placeholder(str),  # default: the "tokenizer" folder beside it
        hidden_layer=-1,  # "pretrained": -1 last hidden state, -2 penultimate, ...
        cache=True,  # "pretrained": encode each distinct training caption once
        sample_prompts=[],  # prompts of the training run's sample grids ([]: "")
    )
    c.sample = dict(
        sampler="ddim",
        num_steps=20,
        guidance_scale=1.0,
        num_samples=64,
        seed=0,
        options=ml_collections.ConfigDict(),
    )
    c.autoencoder = _autoencoder_defaults()
    c.latent = _latent_defaults()
    c.classifier = _classifier_defaults()
    c.clip = _clip_defaults()
    c.super_resolution = _super_resolution_defaults()
    return ml_collections.ConfigDict(c)


def _autoencoder_defaults() -> dict[str, Any]:
    """config.autoencoder: the KL-VAE of a task="autoencoder" run and its loss."""
    return dict(
        kwargs=ml_collections.ConfigDict(),  # AutoencoderKL fields (channels, latent_channels, ...)
        reconstruction="l1",  # or "l2"; summed over pixels as in LDM
        kl_weight=1e-6,
        perceptual_fn=placeholder(str),  # "package.module:function", images -> features
        perceptual_weight=1.0,
        disc_start=placeholder(int),  # None: no discriminator; else the step it starts at
        disc_weight=0.5,
        disc_channels=64,
        disc_layers=3,
        eval_images=64,  # held-out images reconstructed in each grid (and for eval/psnr)
    )


def _classifier_defaults() -> dict[str, Any]:
    """config.classifier: the noisy classifier of a task="classifier" run (for guidance)."""
    return dict(
        kwargs=ml_collections.ConfigDict(),  # NoisyClassifier fields (channels, head_dim, ...)
        max_timestep=placeholder(int),  # None: train at every timestep of config.diffusion
        eval_timesteps=[0, 250, 500, 750],  # held-out accuracy at these noise levels
        eval_images=512,  # held-out images of the accuracy (at most the split's size)
    )


def _clip_defaults() -> dict[str, Any]:
    """config.clip: the noise-aware CLIP of a task="clip" run (for CLIP guidance); its text
    tower is config.text's "small" encoder."""
    return dict(
        kwargs=ml_collections.ConfigDict(),  # image tower: NoisyClassifier fields
        embed_dim=64,
        patch_size=1,  # > 1: the image tower reads p x p pixel patches folded into channels
        max_timestep=placeholder(int),  # None: train at every timestep of config.diffusion
        eval_timesteps=[0, 250, 500, 750],  # held-out retrieval accuracy at these noise levels
        eval_images=512,
    )


def _super_resolution_defaults() -> dict[str, Any]:
    """config.super_resolution: a cascade's super-resolution stage (task="super_resolution";
    its U-Net is config.model)."""
    return dict(
        factor=4,  # high / low resolution
        augment_levels=4,  # noise conditioning augmentation levels (level 0: clean input)
        sample_level=1,  # the level the low-resolution input is noised to at sampling
        eval_images=64,  # held-out images upsampled for eval/psnr
    )


def _latent_defaults() -> dict[str, Any]:
    """config.latent: diffusion in the latent space of a trained, frozen VAE."""
    return dict(
        vae=placeholder(str),  # None: pixel space; a jaxdiff autoencoder workdir or a vae/ dir
        vae_step=placeholder(int),  # checkpoint of a jaxdiff workdir (None: the newest)
        cache=False,  # encode the split once (posterior moments) instead of in every step
        scaling_factor=placeholder(float),  # None: the VAE's own
        estimate_scaling_factor=False,  # 1 / std of the latents of the first images
        estimate_examples=512,
    )


def _int(lo: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


def _num(lo: float | None = None, hi: float | None = None, open_lo: bool = False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            return False
        if lo is not None and (v <= lo if open_lo else v < lo):
            return False
        return hi is None or v <= hi

    return check


def _one_of(*allowed):
    return lambda v: v in allowed


def _optional(check):
    return lambda v: v is None or check(v)


def _is_dict(v: Any) -> bool:
    return isinstance(v, Mapping | ml_collections.ConfigDict)


_BOOL = lambda v: isinstance(v, bool)  # noqa: E731
_STR = lambda v: isinstance(v, str) and bool(v)  # noqa: E731

# field -> (check, description of what is allowed)
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "data": {
        "name": (_STR, "a dataset name (digits, image_folder, cifar10, ...)"),
        "split": (_STR, "a split name"),
        "path": (_optional(_STR), "None or a folder path"),
        "builder_kwargs": (lambda v: _is_dict(v), "a dict of the dataset builder's options"),
        "image_size": (_optional(_int(1)), "None or an int >= 1"),
        "global_batch_size": (_int(1), "an int >= 1"),
        "random_flip": (_BOOL, "a bool"),
        "data_dir": (_optional(_STR), "None or a directory"),
        "download": (_BOOL, "a bool"),
        "worker_count": (_int(0), "an int >= 0"),
    },
    "model": {
        "preset": (_one_of(*_PRESETS), f"one of {_PRESETS}"),
        "dtype": (_one_of("float32", "bfloat16"), "float32 or bfloat16"),
        "kwargs": (lambda v: _is_dict(v), "a dict of U-Net fields"),
        "patch_size": (_int(1), "an int >= 1 dividing the image size"),
    },
    "diffusion": {
        "objective": (_one_of("diffusion", "edm"), "diffusion or edm"),
        "beta_schedule": (_one_of(*schedules.BETA_SCHEDULES), str(schedules.BETA_SCHEDULES)),
        "num_train_timesteps": (_int(1), "an int >= 1"),
        "beta_start": (_num(0, 1, open_lo=True), "a float in (0, 1]"),
        "beta_end": (_num(0, 1, open_lo=True), "a float in (0, 1]"),
        "rescale_betas_zero_snr": (_BOOL, "a bool"),
        "prediction_type": (_one_of(*diffusion.PREDICTION_TYPES), str(diffusion.PREDICTION_TYPES)),
        "weighting": (_one_of(*losses.WEIGHTINGS), str(losses.WEIGHTINGS)),
        "min_snr_gamma": (_num(0, open_lo=True), "a float > 0"),
        "p2_k": (_num(0, open_lo=True), "a float > 0"),
        "p2_gamma": (_num(0), "a float >= 0"),
        "learned_variance": (_BOOL, "a bool (the model's output holds variance values too)"),
        "vlb_weight": (_num(0), "a float >= 0"),
        "sigma_data": (_num(0, open_lo=True), "a float > 0"),
        "p_mean": (_num(), "a float"),
        "p_std": (_num(0, open_lo=True), "a float > 0"),
        "sigma_min": (_num(0, open_lo=True), "a float > 0"),
        "sigma_max": (_num(0, open_lo=True), "a float > 0"),
    },
    "optim": {
        "lr": (_num(0, open_lo=True), "a float > 0"),
        "warmup_steps": (_int(0), "an int >= 0"),
        "decay": (_one_of("constant", "cosine"), "constant or cosine"),
        "final_lr_fraction": (_num(0, 1), "a float in [0, 1]"),
        "weight_decay": (_num(0), "a float >= 0"),
        "b1": (_num(0, 1), "a float in [0, 1)"),
        "b2": (_num(0, 1), "a float in [0, 1)"),
        "eps": (_num(0, open_lo=True), "a float > 0"),
        "grad_clip": (_optional(_num(0, open_lo=True)), "None or a float > 0"),
        "grad_accum_steps": (_int(1), "an int >= 1"),
    },
    "ema": {
        "decay": (_optional(_num(0, 1)), "None or a float in [0, 1)"),
        "half_life_images": (_optional(_num(0, open_lo=True)), "None or a float > 0"),
        "warmup": (_BOOL, "a bool"),
    },
    "train": {
        "num_steps": (_int(0), "an int >= 0"),
        "log_every": (_int(1), "an int >= 1"),
        "save_every": (_int(1), "an int >= 1"),
        "sample_every": (_int(0), "an int >= 0 (0: only at the end)"),
        "keep_checkpoints": (_int(1), "an int >= 1"),
        "cond_drop_prob": (_num(0, 1), "a float in [0, 1]"),
        "fsdp": (_int(1), "an int >= 1 dividing the device count"),
        "progress": (_BOOL, "a bool"),
    },
    "text": {
        "encoder": (_one_of(*TEXT_ENCODERS), f"one of {TEXT_ENCODERS}"),
        "max_length": (_optional(_int(2)), "None or an int >= 2"),
        "width": (_int(1), "an int >= 1"),
        "num_layers": (_int(1), "an int >= 1"),
        "num_heads": (_int(1), "an int >= 1 dividing config.text.width"),
        "mlp_ratio": (_int(1), "an int >= 1"),
        "dropout": (_num(0, 1), "a float in [0, 1]"),
        "pretrained_dir": (_optional(_STR), "None or a transformers text-encoder folder"),
        "tokenizer_dir": (_optional(_STR), "None or a tokenizer folder"),
        "hidden_layer": (_int(), "an int (-1: the last hidden state)"),
        "cache": (_BOOL, "a bool"),
        "sample_prompts": (
            lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) for p in v),
            "a list of prompts",
        ),
    },
    "sample": {
        "sampler": (_one_of(*samplers.available()), str(samplers.available())),
        "num_steps": (_int(1), "an int >= 1"),
        "guidance_scale": (_num(0), "a float >= 0"),
        "num_samples": (_int(1), "an int >= 1"),
        "seed": (_int(0), "an int >= 0"),
        "options": (lambda v: _is_dict(v), "a dict of sampler options"),
    },
}
SCHEMA["autoencoder"] = {
    "kwargs": (lambda v: _is_dict(v), "a dict of AutoencoderKL fields"),
    "reconstruction": (_one_of("l1", "l2"), "l1 or l2"),
    "kl_weight": (_num(0), "a float >= 0"),
    "perceptual_fn": (_optional(_STR), "None or 'package.module:function'"),
    "perceptual_weight": (_num(0), "a float >= 0"),
    "disc_start": (_optional(_int(0)), "None (no discriminator) or an int >= 0"),
    "disc_weight": (_num(0), "a float >= 0"),
    "disc_channels": (_int(1), "an int >= 1"),
    "disc_layers": (_int(1), "an int >= 1"),
    "eval_images": (_int(1), "an int >= 1"),
}
SCHEMA["latent"] = {
    "vae": (_optional(_STR), "None or a jaxdiff autoencoder workdir / diffusers vae directory"),
    "vae_step": (_optional(_int(0)), "None or an int >= 0"),
    "cache": (_BOOL, "a bool"),
    "scaling_factor": (_optional(_num(0, open_lo=True)), "None or a float > 0"),
    "estimate_scaling_factor": (_BOOL, "a bool"),
    "estimate_examples": (_int(1), "an int >= 1"),
}
SCHEMA["classifier"] = {
    "kwargs": (lambda v: _is_dict(v), "a dict of NoisyClassifier fields"),
    "max_timestep": (_optional(_int(1)), "None or an int >= 1"),
    "eval_timesteps": (
        lambda v: isinstance(v, list | tuple) and bool(v) and all(_int(0)(t) for t in v),
        "a non-empty list of ints >= 0",
    ),
    "eval_images": (_int(1), "an int >= 1"),
}
SCHEMA["clip"] = {
    "kwargs": (lambda v: _is_dict(v), "a dict of NoisyClassifier fields (the image tower)"),
    "embed_dim": (_int(2), "an int >= 2"),
    "patch_size": (_int(1), "an int >= 1"),
    "max_timestep": SCHEMA["classifier"]["max_timestep"],
    "eval_timesteps": SCHEMA["classifier"]["eval_timesteps"],
    "eval_images": (_int(2), "an int >= 2"),
}
SCHEMA["super_resolution"] = {
    "factor": (_int(2), "an int >= 2"),
    "augment_levels": (_int(1), "an int >= 1"),
    "sample_level": (_int(0), "an int >= 0"),
    "eval_images": (_int(1), "an int >= 1"),
}
TASKS = ("diffusion", "autoencoder", "classifier", "clip", "super_resolution")
TOP_LEVEL = {
    "seed": (_int(0), "an int >= 0"),
    "task": (_one_of(*TASKS), f"one of {TASKS}"),
}


def validate_config(config: Mapping[str, Any]) -> None:
    """Check every field of a run config; raise ValueError naming the first bad one."""
    for key, value in config.items():
        if key in TOP_LEVEL:
            check, allowed = TOP_LEVEL[key]
            if not check(value):
                raise ValueError(f"config.{key}={value!r} is invalid; allowed: {allowed}.")
            continue
        if key not in SCHEMA:
            raise ValueError(
                f"Unknown config section {key!r}; allowed: {sorted([*SCHEMA, *TOP_LEVEL])}."
            )
        for field, fval in value.items():
            if field not in SCHEMA[key]:
                raise ValueError(
                    f"Unknown config field {key}.{field}; fields of {key}: "
                    f"{', '.join(sorted(SCHEMA[key]))}."
                )
            check, allowed = SCHEMA[key][field]
            if not check(fval):
                raise ValueError(f"config.{key}.{field}={fval!r} is invalid; allowed: {allowed}.")
    missing = [f"{s}.{f}" for s in SCHEMA for f in SCHEMA[s] if f not in config.get(s, {})]
    if missing:
        raise ValueError(f"Config is missing fields {missing}; start from base_config().")
    _check_relations(config)


def _check_relations(config: Mapping[str, Any]) -> None:
    diffusion_config, train, ema = config["diffusion"], config["train"], config["ema"]
    objective = diffusion_config["objective"]
    if objective == "diffusion" and diffusion_config["beta_start"] >= diffusion_config["beta_end"]:
        raise ValueError(
            f"config.diffusion.beta_start={diffusion_config['beta_start']} must be < "
            f"beta_end={diffusion_config['beta_end']}."
        )
    if objective == "edm" and diffusion_config["sigma_min"] >= diffusion_config["sigma_max"]:
        raise ValueError("config.diffusion.sigma_min must be < sigma_max.")
    if diffusion_config["learned_variance"]:
        _check_learned_variance(diffusion_config)
    if (ema["decay"] is None) == (ema["half_life_images"] is None):
        raise ValueError("Set exactly one of config.ema.decay and config.ema.half_life_images.")
    if train["sample_every"] and train["sample_every"] % train["log_every"]:
        raise ValueError(
            f"config.train.sample_every={train['sample_every']} must be a multiple of "
            f"config.train.log_every={train['log_every']} (samples are drawn at log steps)."
        )
    if config["data"]["name"] == "image_folder" and not config["data"]["path"]:
        raise ValueError("config.data.path must name the folder of an image_folder dataset.")
    _check_text(config["text"])
    if config["data"]["global_batch_size"] % config["optim"]["grad_accum_steps"]:
        raise ValueError("config.data.global_batch_size must be divisible by grad_accum_steps.")
    if config["task"] in ("classifier", "clip", "super_resolution"):  # before config.sample
        _check_noise_reader(config)
    _check_sampling(config)
    _check_autoencoder_and_latent(config)


# config.latent fields that mean something only with a VAE, and their "off" values.
_LATENT_OFF = {
    "vae_step": None,
    "cache": False,
    "scaling_factor": None,
    "estimate_scaling_factor": False,
}


def _check_autoencoder_and_latent(config: Mapping[str, Any]) -> None:
    autoencoder, latent = config["autoencoder"], config["latent"]
    if config["task"] == "autoencoder" and latent["vae"] is not None:
        raise ValueError(
            f"config.latent.vae={latent['vae']!r} is for diffusion runs; an autoencoder run "
            "(config.task='autoencoder') trains a VAE on pixels: set config.latent.vae=None."
        )
    if autoencoder["disc_start"] is not None and config["optim"]["grad_accum_steps"] > 1:
        raise ValueError(
            "config.autoencoder.disc_start needs config.optim.grad_accum_steps=1 (the adaptive "
            f"weight is one of the whole batch); got {config['optim']['grad_accum_steps']}."
        )
    if latent["vae"] is None:
        given = [f for f, off in _LATENT_OFF.items() if latent[f] != off]
        if given:
            raise ValueError(f"config.latent.{given[0]} needs config.latent.vae (a trained VAE).")
        return
    if latent["cache"] and config["data"]["random_flip"]:
        raise ValueError(
            "config.latent.cache=True stores the latents of unflipped images; set "
            "config.data.random_flip=False (or cache=False to encode flipped images)."
        )
    if latent["estimate_scaling_factor"] and latent["scaling_factor"] is not None:
        raise ValueError(
            f"config.latent.scaling_factor={latent['scaling_factor']} and "
            "estimate_scaling_factor=True: give one of them."
        )


def _check_noise_reader(config: Mapping[str, Any]) -> None:
    """A classifier, CLIP or super-resolution run reads the noise of config.diffusion's
    discrete schedule, on pixels."""
    task, diffusion_config = config["task"], config["diffusion"]
    if diffusion_config["objective"] != "diffusion":
        raise ValueError(
            f"config.task={task!r} needs config.diffusion.objective='diffusion' (a discrete "
            f"schedule of timesteps); got {diffusion_config['objective']!r}."
        )
    if config["latent"]["vae"] is not None:
        raise ValueError(
            f"config.latent.vae={config['latent']['vae']!r} is for diffusion runs; a {task} "
            f"run (config.task={task!r}) reads pixels: set config.latent.vae=None."
        )
    want_text = "small" if task == "clip" else "none"
    if config["text"]["encoder"] != want_text:
        why = {
            "clip": "a CLIP run trains its text tower",
            "classifier": "a classifier run predicts the dataset's labels",
            "super_resolution": "a super-resolution run is conditioned on the low-resolution image",
        }[task]
        raise ValueError(
            f"config.text.encoder={config['text']['encoder']!r}: {why}; set "
            f"config.text.encoder={want_text!r}."
        )
    if task == "super_resolution":
        sr = config["super_resolution"]
        if sr["sample_level"] >= sr["augment_levels"]:
            raise ValueError(
                f"config.super_resolution.sample_level={sr['sample_level']} must be below "
                f"augment_levels={sr['augment_levels']}."
            )
        if diffusion_config["learned_variance"]:
            raise ValueError("config.task='super_resolution' needs learned_variance=False.")
        return
    _check_timesteps(task, config["classifier" if task == "classifier" else "clip"],
                     diffusion_config["num_train_timesteps"])  # fmt: skip


def _check_timesteps(task: str, section: Mapping[str, Any], num_t: int) -> None:
    """config.<task>.max_timestep and eval_timesteps lie in the schedule."""
    limit = section["max_timestep"]
    if limit is not None and limit > num_t:
        raise ValueError(
            f"config.{task}.max_timestep={limit} is beyond the schedule; allowed: None or "
            f"an int in [1, {num_t}] (config.diffusion.num_train_timesteps)."
        )
    bad = [t for t in section["eval_timesteps"] if t >= num_t]
    if bad:
        raise ValueError(
            f"config.{task}.eval_timesteps has {bad} beyond the schedule; allowed: "
            f"timesteps in [0, {num_t - 1}] (config.diffusion.num_train_timesteps={num_t})."
        )


def _check_text(text: Mapping[str, Any]) -> None:
    if text["encoder"] == "small" and text["width"] % text["num_heads"]:
        raise ValueError(
            f"config.text.width={text['width']} must be divisible by "
            f"config.text.num_heads={text['num_heads']}."
        )
    if text["encoder"] == "pretrained" and not text["pretrained_dir"]:
        raise ValueError(
            "config.text.encoder='pretrained' needs config.text.pretrained_dir (a "
            "transformers-format CLIP or T5 text-encoder folder)."
        )


def _check_learned_variance(diffusion_config: Mapping[str, Any]) -> None:
    if diffusion_config["objective"] != "diffusion":
        raise ValueError(
            "config.diffusion.learned_variance=True needs objective='diffusion' (the hybrid "
            f"loss); got objective={diffusion_config['objective']!r}."
        )
    try:
        losses.check_learned_variance(
            build_schedule(diffusion_config), diffusion_config["prediction_type"]
        )
    except ValueError as e:
        raise ValueError(f"config.diffusion.learned_variance=True: {e}") from None


def _check_sampling(config: Mapping[str, Any]) -> None:
    """config.sample against the sampler it names (options, step count, schedule)."""
    diffusion_config, sample = config["diffusion"], config["sample"]
    options = sampler_options(
        sample["sampler"],
        dict(sample["options"]),
        learned_variance=diffusion_config["learned_variance"],
    )
    try:
        check_sampler(
            sample["sampler"],
            options,
            schedule=build_schedule(diffusion_config),
            num_steps=sample["num_steps"],
            prediction_type=sampler_prediction_type(
                diffusion_config["objective"], diffusion_config["prediction_type"]
            ),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.sample ({sample['sampler']!r}): {e}") from None


RETIRED_FIELDS = (("data", "eval_split"),)
"""Fields that configs saved with older checkpoints may hold; no longer read, so dropped."""


def config_from_dict(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A run config saved as plain values (with a checkpoint), validated like a new one.

    Fields added since it was saved take their defaults from :func:`base_config`; the
    fields of ``RETIRED_FIELDS`` are dropped; anything else unknown is refused.
    """
    config = base_config()
    for section, values in saved.items():
        if section in TOP_LEVEL or not _is_dict(values) or section not in config:
            config[section] = values
            continue
        for field, value in values.items():
            if (section, field) not in RETIRED_FIELDS:
                config[section][field] = value
    validate_config(config)
    return config
