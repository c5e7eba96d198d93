"""The public entry points: ``sample`` (one lax.scan) and ``SamplingLoop`` (step-level API)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import base
from jaxdiff.samplers.base import ModelFn, Sampler, State

_REGISTRY: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add a sampler to the registry under its ``name``."""
    _REGISTRY[sampler.name] = sampler
    return sampler


def available() -> tuple[str, ...]:
    """Names of all registered samplers."""
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Sampler:
    """The sampler registered under ``name`` (ValueError listing the names otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown sampler {name!r}; available: {', '.join(available())}.")
    return _REGISTRY[name]


def resolve_options(sampler: Sampler, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with the user's options; unknown or inapplicable ones are refused."""
    unknown = [k for k in options if k not in sampler.options]
    if unknown:
        name = unknown[0]
        owners = [s.name for s in _REGISTRY.values() if name in s.options]
        if owners:
            raise ValueError(
                f"Option {name!r} does not apply to sampler {sampler.name!r} (it applies to: "
                f"{', '.join(sorted(owners))}). Options of {sampler.name!r}: "
                f"{', '.join(sorted(sampler.options))}."
            )
        raise ValueError(
            f"Unknown option {name!r} for sampler {sampler.name!r}; allowed: "
            f"{', '.join(sorted(sampler.options))}."
        )
    opts = dict(sampler.options)
    for k, v in options.items():
        if base.is_traced(v) and k not in sampler.traced_options:
            raise ValueError(
                f"Option {k!r} of sampler {sampler.name!r} must be a Python value (it shapes "
                f"the computation); only {sorted(sampler.traced_options)} may be traced."
            )
        opts[k] = tuple(v) if isinstance(v, list) else v
    return opts


class SamplingLoop:
    """A prepared sampler: the step-level API for users who write their own loops.

    Example:
      >>> loop = SamplingLoop("ddim", schedule=s, num_steps=50)   # doctest: +SKIP
      >>> state = loop.init(noise)
      >>> for k in range(loop.num_model_calls):
      ...     state, x_in, t = loop.model_input(state, k, key=key)
      ...     state = loop.step(state, k, model(x_in, t), key=key)
      >>> x0 = loop.result(state)

    ``jaxdiff.sample`` runs exactly these calls inside one ``lax.scan``.
    """

    def __init__(
        self,
        sampler: str | Sampler,
        *,
        schedule: Any,
        num_steps: int,
        prediction_type: str = "epsilon",
        **options: Any,
    ):
        self.sampler = get(sampler) if isinstance(sampler, str) else sampler
        s = self.sampler
        if not isinstance(schedule, s.schedule_types):
            allowed = ", ".join(t.__name__ for t in s.schedule_types)
            raise ValueError(
                f"Sampler {s.name!r} needs a schedule of type {allowed}; "
                f"got {type(schedule).__name__}."
            )
        if prediction_type not in s.prediction_types:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not supported by sampler {s.name!r}; "
                f"allowed: {', '.join(s.prediction_types)}."
            )
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"num_steps must be a Python int; got {num_steps!r}.")
        limit = getattr(schedule, "num_train_timesteps", None)
        if num_steps < 1 or (limit is not None and num_steps > limit):
            bound = f"[1, num_train_timesteps={limit}]" if limit is not None else ">= 1"
            raise ValueError(f"num_steps must be in {bound}; got {num_steps}.")
        self.opts = resolve_options(s, options)
        s.check(self.opts, schedule, int(num_steps))
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.prediction_type = prediction_type
        self.plan = s.plan(schedule, self.num_steps, self.opts)
        self.tables = {k: jnp.asarray(v) for k, v in self.plan.tables.items()}
        self.consts = {k: jnp.asarray(v) for k, v in self.plan.consts.items()}

    @property
    def num_model_calls(self) -> int:
        """Number of model evaluations K."""
        return self.plan.num_model_calls

    @property
    def timesteps(self) -> np.ndarray:
        """Training timestep fed to the model at each call, [K] (float64, maybe fractional)."""
        return self.plan.timesteps

    @property
    def stochastic(self) -> bool:
        """Whether the configuration draws noise (needs a key or explicit step noise)."""
        return self.sampler.is_stochastic(self.opts)

    def init(self, noise: jax.Array) -> State:
        """The loop state from x_T ~ N(0, I) (scaled as the sampler's grid requires)."""
        x = jnp.asarray(noise, jnp.float32) * jnp.float32(self.plan.init_scale)
        return self.sampler.init_state(x, self.opts)

    def model_input(
        self,
        state: State,
        k: Any,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[State, jax.Array, jax.Array]:
        """(state, x_in, t [B]) for model call k; pass the same key/noise to :meth:`step`."""
        noise = self._noise(state, k, key, noise)
        row = base.rows_at(self.tables, k, self.consts)
        state, x_in, t = self.sampler.model_input(state, row, noise, self.opts)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_in.shape[0],))
        return state, x_in, t

    def step(
        self,
        state: State,
        k: Any,
        output: jax.Array,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> State:
        """Fold the model output of call k into the state (all maths in float32)."""
        noise = self._noise(state, k, key, noise)
        row = base.rows_at(self.tables, k, self.consts)
        output = jnp.asarray(output).astype(jnp.float32)
        return self.sampler.update(state, output, row, noise, self.opts, self.prediction_type)

    def _noise(self, state, k, key, noise):
        if noise is not None or not self.stochastic:
            return noise
        if key is None:
            raise ValueError(f"Sampler {self.sampler.name!r} is stochastic: pass a key.")
        return base.draw_noise(key, k, state["x"].shape)

    def result(self, state: State) -> jax.Array:
        """The final sample."""
        return self.sampler.result(state)

    def run(
        self,
        model_fn: ModelFn,
        noise: jax.Array,
        *,
        key: jax.Array | None = None,
        cond: Mapping[str, Any] | None = None,
        step_noise: jax.Array | None = None,
        return_trajectory: bool = False,
    ):
        """Run all K model calls inside one ``lax.scan``; see :func:`sample`."""
        noise = jnp.asarray(noise)
        stochastic = self.stochastic
        if stochastic and key is None and step_noise is None:
            raise ValueError(
                f"Sampler {self.sampler.name!r} with these options is stochastic: pass key= "
                "(one PRNG key, or one per sample) or step_noise=."
            )
        if key is not None:
            base.check_key(key, noise.shape[0])
        if step_noise is not None:
            want = (self.num_model_calls, *noise.shape)
            if tuple(step_noise.shape) != want:
                raise ValueError(f"step_noise must have shape {want}; got {step_noise.shape}.")
        cond = dict(cond or {})
        static = _StaticRun(
            self.sampler,
            tuple(sorted((k, v) for k, v in self.opts.items() if k not in self._traced_names)),
            self.prediction_type,
            self.plan.init_scale,
            model_fn,
            stochastic,
            step_noise is not None,
            return_trajectory,
        )
        traced = {k: jnp.asarray(v, jnp.float32) for k, v in self._traced_items()}
        return _run_scan(static, self.tables, self.consts, traced, noise, key, cond, step_noise)

    @property
    def _traced_names(self) -> frozenset[str]:
        return self.sampler.traced_options

    def _traced_items(self):
        return [(k, v) for k, v in self.opts.items() if k in self.sampler.traced_options]


@dataclasses.dataclass(frozen=True)
class _StaticRun:
    """Everything that shapes the compiled loop (the cache key of the jitted scan)."""

    sampler: Sampler
    static_opts: tuple
    prediction_type: str
    init_scale: float
    model_fn: ModelFn
    stochastic: bool
    explicit_noise: bool
    return_trajectory: bool


@functools.partial(jax.jit, static_argnums=0)
def _run_scan(static: _StaticRun, tables, consts, traced, noise, key, cond, step_noise):
    sampler, pred = static.sampler, static.prediction_type
    opts = {**dict(static.static_opts), **traced}

    def body(state, inputs):
        k, extra = inputs
        eps = None
        if static.stochastic:
            eps = extra if static.explicit_noise else base.draw_noise(key, k, noise.shape)
        row = base.rows_at(tables, k, consts)
        state, x_in, t = sampler.model_input(state, row, eps, opts)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_in.shape[0],))
        out = jnp.asarray(static.model_fn(x_in, t, **cond)).astype(jnp.float32)
        new = sampler.update(state, out, row, eps, opts, pred)
        traj = (new["x"], x_in, t) if static.return_trajectory else None
        return new, traj

    x = jnp.asarray(noise, jnp.float32) * jnp.float32(static.init_scale)
    num_calls = next(iter(tables.values())).shape[0]
    ks = jnp.arange(num_calls)
    extras = step_noise.astype(jnp.float32) if static.explicit_noise else None
    # init_state only needs shapes and the plan's static parts.
    state, traj = jax.lax.scan(body, sampler.init_state(x, opts), (ks, extras))
    x0 = sampler.result(state)
    if static.return_trajectory:
        return x0, {"x": traj[0], "model_x": traj[1], "model_t": traj[2]}
    return x0


def sample(
    model_fn: ModelFn,
    noise: jax.Array,
    *,
    schedule: Any,
    sampler: str = "ddim",
    num_steps: int = 50,
    prediction_type: str = "epsilon",
    key: jax.Array | None = None,
    cond: Mapping[str, Any] | None = None,
    step_noise: jax.Array | None = None,
    return_trajectory: bool = False,
    **options: Any,
):
    """Draw samples by integrating the reverse process with a named sampler.

    Args:
      model_fn: ``model_fn(x_t, t, **cond) -> output``; x_t is the variance-preserving input
        (what diffusers' ``scale_model_input`` returns), t the training timestep [B] (float32,
        fractional for sigma-space samplers), output read by ``prediction_type``. It may
        compute in any dtype; the sampler maths always runs in float32.
      noise: x_T ~ N(0, I), [B, ...]; the sampler scales it as its grid requires.
      schedule: the training schedule (``jaxdiff.make_schedule(...)``; ``EDMSchedule`` for
        EDM-trained models with the "edm" sampler). It must be concrete (close over it).
      sampler: one of ``jaxdiff.samplers.available()``.
      num_steps: number of inference steps (a Python int: it sets the loop length).
      prediction_type: "epsilon", "sample" or "v_prediction".
      key: PRNG key for stochastic samplers: one key, or one per sample (shape [B]) so that
        sample i does not depend on the batch it is drawn in.
      cond: extra keyword arguments of ``model_fn`` (labels, context, ...), may be traced.
      step_noise: explicit noise per model call [K, B, ...] instead of drawing from ``key``
        (to reproduce another implementation's random stream).
      return_trajectory: also return {"x": state after each call [K, ...], "model_x": model
        inputs [K, ...], "model_t": model timesteps [K, B]}.
      **options: sampler options with diffusers' config names (see each sampler's
        docstring), e.g. ``timestep_spacing="trailing"``, ``eta=0.5``, ``solver_order=3``.
        ``eta`` and EDM's ``S_churn``/``S_noise``/``S_tmin``/``S_tmax`` may be traced.

    Returns:
      x_0 [B, ...] float32 (and the trajectory dict when requested).

    Wrap the call in ``jax.jit`` (with the parameters as arguments) to compile once: only
    shapes and ``num_steps`` are static, so new noise, seeds, eta or guidance scales reuse
    the compiled loop.
    """
    diffusion.check_prediction_type(prediction_type)
    loop = SamplingLoop(
        sampler,
        schedule=schedule,
        num_steps=num_steps,
        prediction_type=prediction_type,
        **options,
    )
    return loop.run(
        model_fn,
        noise,
        key=key,
        cond=cond,
        step_noise=step_noise,
        return_trajectory=return_trajectory,
    )
