"""diffusers scheduler configs (``scheduler/scheduler_config.json``) <-> jaxdiff samplers.

Each supported diffusers scheduler class maps to the jaxdiff sampler that reproduces it, with
the same config field names: the schedule fields build the training schedule
(`jaxdiff.make_schedule`), ``prediction_type`` is the model's, and every other field of the
class is passed to the sampler as the option of that name. A field the class does not define
is dropped, because diffusers itself drops it (``from_config`` only logs that it "will be
ignored"; published checkpoints carry such fields, e.g. SD 1.5's PNDM config has
``clip_sample``). A field the class defines but jaxdiff has no option for is accepted only at
diffusers' default value and refused by name otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from jaxdiff import samplers
from jaxdiff.schedules import DiscreteSchedule, make_schedule

CONFIG_NAME = "scheduler_config.json"
_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None)  # fmt: skip
_SCALE = dict(thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
_SIGMAS = dict(use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)
_FLOW = dict(use_flow_sigmas=False, flow_shift=1.0, use_dynamic_shifting=False,
             time_shift_type="exponential")  # fmt: skip
_SPACING = dict(timestep_spacing="linspace", steps_offset=0)


def _fields(*groups: dict, **fields: Any) -> dict[str, Any]:
    merged = {}
    for group in groups:
        merged.update(group)
    return {**merged, **fields}


# diffusers class -> (jaxdiff sampler, every field of the class's __init__ with its default;
# diffusers 0.39.0).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "PNDMScheduler": ("pndm", _fields(
        _SCHEDULE, skip_prk_steps=False, set_alpha_to_one=False, prediction_type="epsilon",
        timestep_spacing="leading", steps_offset=0)),
    "DDIMScheduler": ("ddim", _fields(
        _SCHEDULE, _SCALE, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
        prediction_type="epsilon", clip_sample_range=1.0, timestep_spacing="leading",
        rescale_betas_zero_snr=False)),
    "DDPMScheduler": ("ddpm", _fields(
        _SCHEDULE, _SCALE, variance_type="fixed_small", clip_sample=True,
        prediction_type="epsilon", clip_sample_range=1.0, timestep_spacing="leading",
        steps_offset=0, rescale_betas_zero_snr=False)),
    "DPMSolverMultistepScheduler": ("dpm_solver", _fields(
        _SCHEDULE, _SCALE, _SIGMAS, _FLOW, _SPACING, solver_order=2, prediction_type="epsilon",
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, use_lu_lambdas=False, final_sigmas_type="zero",
        lambda_min_clipped=-math.inf, variance_type=None, rescale_betas_zero_snr=False)),
    "UniPCMultistepScheduler": ("unipc", _fields(
        _SCHEDULE, _SCALE, _SIGMAS, _FLOW, _SPACING, solver_order=2, prediction_type="epsilon",
        predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
        solver_p=None, final_sigmas_type="zero", rescale_betas_zero_snr=False, sigma_min=None,
        sigma_max=None, shift_terminal=None)),
    "DEISMultistepScheduler": ("deis", _fields(
        _SCHEDULE, _SCALE, _SIGMAS, _FLOW, _SPACING, solver_order=2, prediction_type="epsilon",
        algorithm_type="deis", solver_type="logrho", lower_order_final=True)),
    "EulerDiscreteScheduler": ("euler", _fields(
        _SCHEDULE, _SIGMAS, _SPACING, prediction_type="epsilon", interpolation_type="linear",
        sigma_min=None, sigma_max=None, timestep_type="discrete", rescale_betas_zero_snr=False,
        final_sigmas_type="zero")),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", _fields(
        _SCHEDULE, _SPACING, prediction_type="epsilon", rescale_betas_zero_snr=False)),
    "HeunDiscreteScheduler": ("heun", _fields(
        _SCHEDULE, _SIGMAS, _SPACING, beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", clip_sample=False, clip_sample_range=1.0)),
    "LCMScheduler": ("lcm", _fields(
        _SCHEDULE, _SCALE, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        original_inference_steps=50, clip_sample=False, clip_sample_range=1.0,
        set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
        timestep_spacing="leading", timestep_scaling=10.0, rescale_betas_zero_snr=False)),
}  # fmt: skip
_SCHEDULE_FIELDS = (*_SCHEDULE, "rescale_betas_zero_snr")
_CLASS_OF = {sampler: cls for cls, (sampler, _) in SCHEDULERS.items()}


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """A sampler with its options, the training schedule and the model's prediction type.

    Hashable (it is part of the compiled program's cache key): ``options`` and ``schedule_args``
    are sorted (name, value) tuples of Python values.

    Attributes:
      name: a ``jaxdiff.samplers.available()`` name.
      options: sampler options (diffusers' config names).
      prediction_type: "epsilon", "v_prediction" or "sample".
      schedule_args: the `jaxdiff.make_schedule` arguments (diffusers' schedule fields).
      diffusers_class: the scheduler class it reproduces (None when it has none).
    """

    name: str
    options: tuple[tuple[str, Any], ...]
    prediction_type: str
    schedule_args: tuple[tuple[str, Any], ...]
    diffusers_class: str | None = None

    @property
    def schedule(self) -> DiscreteSchedule:
        """The training schedule (built once per distinct choice)."""
        return _schedule(self.schedule_args)

    def with_sampler(self, name: str, **options: Any) -> SamplerChoice:
        """The same schedule and prediction type with another sampler (validated now)."""
        choice = SamplerChoice(name, _items(options), self.prediction_type, self.schedule_args,
                               _CLASS_OF.get(name))  # fmt: skip
        custom = "timesteps" in options or "sigmas" in options
        choice.loop(None if custom else 10)
        return choice

    def loop(self, num_steps: int | None, **extra: Any) -> samplers.SamplingLoop:
        """The `jaxdiff.SamplingLoop` for ``num_steps`` (extra options such as start_step)."""
        return samplers.SamplingLoop(
            self.name, schedule=self.schedule, num_steps=num_steps,
            prediction_type=self.prediction_type, **{**dict(self.options), **extra},
        )  # fmt: skip

    def to_config(self) -> dict[str, Any]:
        """The diffusers ``scheduler_config.json`` contents of this choice.

        Per-call options (DDIM's ``eta``, Euler's churn) are left out, as diffusers passes
        them to each call rather than storing them.

        Raises:
          ValueError: when the sampler has no diffusers scheduler class (e.g. "edm"), or has
            options that class's config does not define.
        """
        if self.diffusers_class is None:
            raise ValueError(
                f"sampler {self.name!r} has no diffusers scheduler class; supported: "
                f"{sorted(_CLASS_OF)}."
            )
        defaults = SCHEDULERS[self.diffusers_class][1]
        schedule = {k: v for k, v in self.schedule_args if k in defaults}
        # Options diffusers takes per call (DDIM's eta, Euler's churn) are not config fields.
        per_call = getattr(samplers.SAMPLERS[self.name], "traced_options", frozenset())
        options = {k: v for k, v in self.options if k not in per_call}
        if unknown := sorted(set(options) - set(defaults)):
            raise ValueError(
                f"options {unknown} of sampler {self.name!r} are not {self.diffusers_class} "
                "config fields; a diffusers scheduler config cannot hold them."
            )
        config = {**defaults, **schedule, **options}
        config["prediction_type"] = self.prediction_type
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        return {"_class_name": self.diffusers_class, "_diffusers_version": "0.39.0", **config}


def _items(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in mapping.items()))


@functools.lru_cache(maxsize=32)
def _schedule(schedule_args: tuple) -> DiscreteSchedule:
    args = dict(schedule_args)
    return make_schedule(
        args["beta_schedule"], args["num_train_timesteps"], beta_start=args["beta_start"],
        beta_end=args["beta_end"], trained_betas=args["trained_betas"],
        rescale_betas_zero_snr=args.get("rescale_betas_zero_snr", False),
    )  # fmt: skip


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, list | tuple) or isinstance(default, list | tuple):
        return list(value or []) == list(default or [])
    return value == default


def sampler_from_config(
    config: Mapping[str, Any], class_name: str | None = None, source: str = CONFIG_NAME
) -> SamplerChoice:
    """The jaxdiff sampler that reproduces a diffusers scheduler config.

    Args:
      config: the parsed ``scheduler_config.json``.
      class_name: the scheduler class (model_index.json's entry wins over the config's
        ``_class_name``, as in diffusers).
      source: name for error messages.

    Returns:
      A `SamplerChoice`.

    Raises:
      ValueError: for an unsupported class (listing the supported ones) or a field value
        jaxdiff cannot reproduce (named).
    """
    name = class_name or config.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(
            f"{source}: scheduler class {name!r} is not supported; supported: "
            f"{', '.join(sorted(SCHEDULERS))}."
        )
    sampler, defaults = SCHEDULERS[name]
    # Fields the class does not define are dropped, as diffusers drops them.
    cfg = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    allowed = set(samplers.option_names(samplers.SAMPLERS[sampler]))
    options, problems = {}, []
    for key, value in cfg.items():
        if key in _SCHEDULE_FIELDS or key == "prediction_type":
            continue
        if key in allowed:
            options[key] = value
        elif not _same(value, defaults[key]):
            problems.append(f"{key}={value!r} (jaxdiff's {sampler!r} sampler supports only "
                            f"{defaults[key]!r})")  # fmt: skip
    if problems:
        raise ValueError(f"{source}: unsupported {name} settings: " + "; ".join(problems) + ".")
    schedule = {k: cfg[k] for k in _SCHEDULE_FIELDS if k in cfg}
    if schedule.get("trained_betas") is not None:
        schedule["trained_betas"] = tuple(float(b) for b in schedule["trained_betas"])
    choice = SamplerChoice(sampler, _items(options), cfg["prediction_type"], _items(schedule),
                           name)  # fmt: skip
    try:
        choice.loop(min(10, int(cfg["num_train_timesteps"])))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return choice


def load_scheduler(path: str | os.PathLike, class_name: str | None = None) -> SamplerChoice:
    """`sampler_from_config` of a ``scheduler/`` directory's scheduler_config.json.

    Raises:
      FileNotFoundError: when the directory has no scheduler_config.json.
    """
    file = os.path.join(os.fspath(path), CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (the scheduler component needs it).")
    with open(file) as f:
        return sampler_from_config(json.load(f), class_name, file)


def save_scheduler(choice: SamplerChoice, path: str | os.PathLike) -> None:
    """Write ``choice`` as ``path/scheduler_config.json`` (see `SamplerChoice.to_config`)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(os.fspath(path), CONFIG_NAME), "w") as f:
        json.dump(choice.to_config(), f, indent=2, sort_keys=True)
