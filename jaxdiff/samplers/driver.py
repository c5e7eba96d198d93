"""The public entry points: ``sample`` (one lax.scan) and ``SamplingLoop`` (step-level API).

Both drive a :class:`~jaxdiff.samplers.core.Sampler` built by a factory of
``jaxdiff.samplers.SAMPLERS``. The scan is compiled once per (sampler, grid, static options,
shapes, model function): the factory is called again inside the compiled function with the
traced options (``eta``, EDM's churn), so new noise, seeds, option values or guidance scales
reuse the compiled loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.samplers import core, grids, inpaint

Factory = Callable[..., core.Sampler]
# Options of every sampler, handled by the driver: inpainting by replacement.
KNOWN_REGION = ("known_image", "known_mask", "known_noise")
_GENERIC = ("schedule", "num_steps", "prediction_type")


def option_names(factory: Factory) -> tuple[str, ...]:
    """The option names (diffusers' config names) a sampler factory accepts."""
    params = inspect.signature(factory).parameters
    return tuple(n for n in params if n not in _GENERIC)


def _check_options(name: str, factory: Factory, options: Mapping[str, Any], registry) -> None:
    allowed = option_names(factory)
    for key, value in options.items():
        if key not in allowed:
            owners = sorted(n for n, f in registry.items() if key in option_names(f))
            if owners:
                raise ValueError(
                    f"Option {key!r} does not apply to sampler {name!r} (it applies to: "
                    f"{', '.join(owners)}). Options of {name!r}: {', '.join(sorted(allowed))}."
                )
            raise ValueError(
                f"Unknown option {key!r} for sampler {name!r}; allowed: "
                f"{', '.join(sorted(allowed))}."
            )
        traced = getattr(factory, "traced_options", frozenset())
        if core.is_traced(value) and key not in traced:
            raise ValueError(
                f"Option {key!r} of sampler {name!r} must be a Python value (it shapes the "
                f"computation); only {sorted(traced)} may be traced."
            )


def _static(value: Any) -> Any:
    """A hashable form of a concrete option value (lists and arrays become tuples)."""
    if isinstance(value, jax.Array | np.ndarray):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else tuple(value.tolist())
    if isinstance(value, list):
        return tuple(value)
    return value


def _grid_length(num_steps: int | None, options: Mapping[str, Any]) -> int:
    """num_steps, or the length of a custom grid (which it must then agree with)."""
    timesteps, sigmas = options.get("timesteps"), options.get("sigmas")
    if timesteps is not None and sigmas is not None:
        raise ValueError("Pass at most one of timesteps= and sigmas= (a custom grid).")
    if timesteps is None and sigmas is None:
        return 50 if num_steps is None else num_steps
    n = len(timesteps) if timesteps is not None else len(sigmas) - 1
    if num_steps is not None and num_steps != n:
        what = "timesteps" if timesteps is not None else "sigmas (less the final point)"
        raise ValueError(f"num_steps={num_steps} disagrees with the {n} custom {what}.")
    return n


class _Key:
    """A schedule as part of a compile-cache key: hashed and compared by value."""

    def __init__(self, schedule: Any):
        self.schedule = schedule
        leaves, treedef = jax.tree.flatten(schedule)
        self._id = (treedef, tuple(np.asarray(x).tobytes() for x in leaves))

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._id == other._id


class SamplingLoop:
    """A prepared sampler: the step-level API for users who write their own loops.

    Example:
      >>> loop = SamplingLoop("ddim", schedule=s, num_steps=50)   # doctest: +SKIP
      >>> state = loop.init(noise)
      >>> for k in range(loop.num_model_calls):
      ...     state, x_in, t = loop.model_input(state, k, key=key)
      ...     state = loop.step(state, k, model(x_in, t), key=key)
      >>> x0 = loop.result(state)

    ``jaxdiff.sample`` runs exactly these calls inside one ``lax.scan``. ``start_step=k``
    skips the first k grid steps (image-to-image, SDEdit): pass the noised image
    ``loop.add_noise(x0, eps)`` instead of pure noise.
    """

    def __init__(
        self,
        sampler: str,
        *,
        schedule: Any,
        num_steps: int | None = None,
        prediction_type: str = "epsilon",
        **options: Any,
    ):
        from jaxdiff.samplers import SAMPLERS, available

        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}; available: {', '.join(available())}.")
        self.name = sampler
        self.factory = SAMPLERS[sampler]
        self.known = {k: options.pop(k) for k in KNOWN_REGION if k in options}
        if self.known and not {"known_image", "known_mask"} <= set(self.known):
            raise ValueError("Inpainting needs both known_image= and known_mask= (1 = keep).")
        if "known_noise" not in self.known and self.known and options.get("start_step"):
            raise ValueError(
                "known_noise= is needed with start_step > 0 (the input is then the noised "
                "image, not the noise that noises the known region)."
            )
        _check_options(sampler, self.factory, options, SAMPLERS)
        num_steps = _grid_length(num_steps, options)
        grids.check_num_steps(num_steps, getattr(schedule, "num_train_timesteps", None))
        self.schedule = schedule
        self.num_steps = num_steps
        self.prediction_type = prediction_type
        traced = getattr(self.factory, "traced_options", frozenset())
        self.options = {k: v if k in traced else _static(v) for k, v in options.items()}
        self.sampler = self.factory(
            schedule, num_steps, prediction_type=prediction_type, **self.options
        )
        self._plain = self.sampler
        if self.known and "known_noise" in self.known:
            self.sampler = inpaint.replace_known(self._plain, **self._known_arrays())

    def _known_arrays(self, noise: jax.Array | None = None) -> dict[str, jax.Array]:
        return {
            "image": self.known["known_image"],
            "mask": self.known["known_mask"],
            "noise": self.known.get("known_noise", noise),
        }

    @property
    def num_model_calls(self) -> int:
        """Number of model evaluations K."""
        return self.sampler.num_model_calls

    @property
    def timesteps(self) -> np.ndarray:
        """Model time at each call, [K] (float64, maybe fractional)."""
        return self.sampler.timesteps

    @property
    def sigmas(self) -> np.ndarray | None:
        """The sigma grid with its final point [N + 1] (sigma-space samplers), else None."""
        return self.sampler.sigmas

    @property
    def init_noise_sigma(self) -> float:
        """What x_T ~ N(0, I) is multiplied by at the start (diffusers' name)."""
        return self.sampler.init_noise_sigma

    @property
    def stochastic(self) -> bool:
        """Whether the configuration draws noise (needs a key or explicit step noise)."""
        return self.sampler.stochastic

    def add_noise(self, x0: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t = alpha x_0 + sigma eps at the first call's noise level (what to pass as the
        starting point of a run with ``start_step > 0``, as diffusers' ``add_noise``)."""
        alpha, sigma = self.sampler.alpha_sigma_start
        return diffusion.q_sample(jnp.asarray(x0), jnp.asarray(noise), alpha, sigma)

    def init(self, noise: jax.Array) -> core.State:
        """The loop state from x_T ~ N(0, I) (or the noised image when starting part-way)."""
        return self.sampler.init(jnp.asarray(noise, jnp.float32))

    def model_input(
        self, state: core.State, k: Any, *, key: jax.Array | None = None, noise=None
    ) -> tuple[core.State, jax.Array, jax.Array]:
        """(state, x_in, t [B]) for model call k; pass the same key/noise to :meth:`step`."""
        z = self._noise(state, k, key, noise)
        state, x_in, t = self.sampler.model_input(state, k, z)
        return state, x_in, jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_in.shape[0],))

    def step(
        self, state: core.State, k: Any, output: jax.Array, *, key=None, noise=None
    ) -> core.State:
        """Fold the model output of call k into the state (all maths in float32)."""
        z = self._noise(state, k, key, noise)
        return self.sampler.update(state, k, jnp.asarray(output).astype(jnp.float32), z)

    def _noise(self, state, k, key, noise):
        if self.known and "known_noise" not in self.known:
            raise ValueError(
                "The step-level API needs known_noise= for inpainting (run() defaults it to "
                "the starting noise)."
            )
        if noise is not None or not self.stochastic:
            return noise
        if key is None:
            raise ValueError(f"Sampler {self.name!r} is stochastic: pass a key.")
        return core.draw_noise(key, k, state.x.shape, self.sampler.noise_draws)

    def result(self, state: core.State) -> jax.Array:
        """The final sample."""
        return self.sampler.result(state)

    def run(
        self,
        model_fn: core.ModelFn,
        noise: jax.Array,
        *,
        key: jax.Array | None = None,
        cond: Mapping[str, Any] | None = None,
        step_noise: jax.Array | None = None,
        return_trajectory: bool = False,
    ):
        """Run all K model calls inside one ``lax.scan``; see :func:`sample`."""
        noise = jnp.asarray(noise)
        if self.stochastic and key is None and step_noise is None:
            raise ValueError(
                f"Sampler {self.name!r} with these options is stochastic: pass key= "
                "(one PRNG key, or one per sample) or step_noise=."
            )
        if key is not None:
            core.check_key(key, noise.shape[0])
        if step_noise is not None:
            draws = self.sampler.noise_draws
            want = (self.num_model_calls, *((draws,) if draws > 1 else ()), *noise.shape)
            if tuple(step_noise.shape) != want:
                raise ValueError(f"step_noise must have shape {want}; got {step_noise.shape}.")
        traced_names = getattr(self.factory, "traced_options", frozenset())
        static_opts = tuple(
            sorted((k, v) for k, v in self.options.items() if k not in traced_names)
        )
        traced = {
            k: jnp.asarray(v, jnp.float32) for k, v in self.options.items() if k in traced_names
        }
        static = _Static(
            factory=self.factory,
            schedule=_Key(self.schedule),
            num_steps=self.num_steps,
            prediction_type=self.prediction_type,
            options=static_opts,
            model_fn=model_fn,
            stochastic=self.stochastic,
            explicit_noise=step_noise is not None,
            return_trajectory=return_trajectory,
        )
        known = self._known_arrays(noise) if self.known else None
        return _run_scan(static, traced, noise, key, dict(cond or {}), step_noise, known)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything that shapes the compiled loop (the cache key of the jitted scan)."""

    factory: Factory
    schedule: _Key
    num_steps: int
    prediction_type: str
    options: tuple
    model_fn: core.ModelFn
    stochastic: bool
    explicit_noise: bool
    return_trajectory: bool


@functools.partial(jax.jit, static_argnums=0)
def _run_scan(static: _Static, traced, noise, key, cond, step_noise, known):
    s = static.factory(
        static.schedule.schedule,
        static.num_steps,
        prediction_type=static.prediction_type,
        **dict(static.options),
        **traced,
    )
    if known is not None:
        s = inpaint.replace_known(s, **known)

    def body(state, inputs):
        k, given = inputs
        z = None
        if static.stochastic:
            z = (
                given
                if static.explicit_noise
                else core.draw_noise(key, k, noise.shape, s.noise_draws)
            )
        state, x_in, t = s.model_input(state, k, z)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_in.shape[0],))
        out = jnp.asarray(static.model_fn(x_in, t, **cond)).astype(jnp.float32)
        state = s.update(state, k, out, z)
        return state, ((state.x, x_in, t) if static.return_trajectory else None)

    calls = jnp.arange(s.num_model_calls)
    given = step_noise.astype(jnp.float32) if static.explicit_noise else None
    state, traj = jax.lax.scan(body, s.init(jnp.asarray(noise, jnp.float32)), (calls, given))
    x0 = s.result(state)
    if static.return_trajectory:
        return x0, {"x": traj[0], "model_x": traj[1], "model_t": traj[2]}
    return x0


def sample(
    model_fn: core.ModelFn,
    noise: jax.Array,
    *,
    schedule: Any,
    sampler: str = "ddim",
    num_steps: int | None = None,
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
      noise: x_T ~ N(0, I), [B, ...]; the sampler scales it as its grid requires. With
        ``start_step=k > 0``: the noised image at the first remaining call (see
        ``SamplingLoop.add_noise``).
      schedule: the training schedule (``jaxdiff.make_schedule(...)``; ``EDMSchedule`` for
        EDM-trained models with the "edm" sampler). It must be concrete (close over it).
      sampler: one of ``jaxdiff.samplers.available()``.
      num_steps: number of inference steps (a Python int: it sets the loop length); default
        50, or the length of a custom ``timesteps=`` / ``sigmas=`` grid.
      prediction_type: "epsilon", "sample" or "v_prediction".
      key: PRNG key for stochastic samplers: one key, or one per sample (shape [B]) so that
        sample i does not depend on the batch it is drawn in.
      cond: extra keyword arguments of ``model_fn`` (labels, context, ...), may be traced.
      step_noise: explicit noise per model call [K, B, ...] instead of drawing from ``key``
        (to reproduce another implementation's random stream).
      return_trajectory: also return {"x": state after each call [K, ...], "model_x": model
        inputs [K, ...], "model_t": model timesteps [K, B]}.
      **options: sampler options with diffusers' config names (see each sampler's
        docstring), e.g. ``timestep_spacing="trailing"``, ``eta=0.5``, ``solver_order=3``;
        ``timesteps=[...]`` / ``sigmas=[...]`` for a custom grid and ``start_step=k`` to
        start part-way. ``eta`` and EDM's ``S_churn``/``S_noise``/``S_tmin``/``S_tmax`` may
        be traced. Every sampler also takes ``known_image=`` / ``known_mask=`` (1 = keep)
        [/ ``known_noise=``, default the starting noise]: inpainting by replacement (see
        ``jaxdiff.samplers.inpaint``); these arrays may be traced.

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
