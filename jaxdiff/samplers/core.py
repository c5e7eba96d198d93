"""What every sampler is made of: the ``Sampler`` functions, its inputs, and shared steps.

A sampler is a factory (``ddim(schedule, num_steps, ...)``, ``dpm_solver(...)``) that takes
the training schedule, the step count and diffusers' option names as keyword arguments,
validates them eagerly, computes everything that depends only on the grid on the host (in
float64 / float32 numpy, as diffusers does), and returns a :class:`Sampler`: pure functions
over the sampler's own NamedTuple state, driven one model call at a time::

    state = s.init(noise)
    for k in range(s.num_model_calls):
        state, x_in, t = s.model_input(state, k, z_k)
        state = s.update(state, k, model(x_in, t), z_k)
    x0 = s.result(state)

where ``z_k`` is the fresh standard-normal noise of call k (None for deterministic samplers).
``jaxdiff.sample`` runs exactly these calls inside one ``lax.scan``; k may be traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.schedules import DiscreteSchedule

State = Any  # a sampler's own NamedTuple; every state has a field ``x``
ModelFn = Callable[..., jax.Array]


def _x_of(state: State) -> jax.Array:
    return state.x


class Sampler(NamedTuple):
    """A sampler prepared for one grid: pure functions over its NamedTuple state.

    Attributes:
      name: the sampler's name (as in ``jaxdiff.samplers.available()``).
      timesteps: the model time at each call, float64 [K] (fractional for sigma-space
        samplers; for EDM with churn, the time without churn).
      stochastic: whether the configuration draws noise at some call.
      init: ``init(noise) -> state``; noise is x_T ~ N(0, I), or, when the sampler starts
        part-way (``start_step > 0``), the noised image x_t = alpha x_0 + sigma eps at the
        first call's noise level ``levels[0]``.
      model_input: ``model_input(state, k, z) -> (state, x_in, t)``: what the model sees at
        call k (t a float32 scalar); a sampler that perturbs x first (EDM churn) returns the
        perturbed state.
      update: ``update(state, k, output, z) -> state``: fold the float32 model output in.
      result: ``result(state) -> x_0``.
      levels: the variance-preserving (alpha, sigma) of each call's noise level, float64
        [K, 2] (the level of the state a call starts from: what diffusers' ``add_noise``
        uses at that call's timestep).
      ve_state: whether the state's x is the variance-exploding x_vp / alpha (sigma-space
        samplers) rather than x_vp itself.
      noise_draws: how many standard-normal arrays of x's shape a call uses; with more than
        one, ``z`` has a leading axis of that size.
      init_noise_sigma: what x_T ~ N(0, I) is multiplied by at the start of a full run
        (diffusers' ``init_noise_sigma``).
      sigmas: the sigma grid with its final point, float32 [N + 1], for samplers that
        integrate in sigma (None otherwise).
      tables: the sampler's per-call coefficient tables (a NamedTuple of [K, ...] arrays),
        for inspection.
    """

    name: str
    timesteps: np.ndarray
    stochastic: bool
    init: Callable[[jax.Array], State]
    model_input: Callable[..., tuple[State, jax.Array, jax.Array]]
    update: Callable[..., State]
    result: Callable[[State], jax.Array] = _x_of
    levels: np.ndarray = np.array([[0.0, 1.0]])
    ve_state: bool = False
    noise_draws: int = 1
    init_noise_sigma: float = 1.0
    sigmas: np.ndarray | None = None
    tables: Any = None

    @property
    def num_model_calls(self) -> int:
        """K, the number of model evaluations."""
        return int(self.timesteps.shape[0])

    @property
    def alpha_sigma_start(self) -> tuple[float, float]:
        """The variance-preserving (alpha, sigma) of the first call."""
        return float(self.levels[0, 0]), float(self.levels[0, 1])


def traceable(*names: str) -> Callable[[Callable], Callable]:
    """Mark the options of a sampler factory that may be traced arrays (e.g. ``eta``).

    The driver passes these as arguments of its compiled loop, so new values never
    recompile; every other option shapes the computation and must be a Python value.
    """

    def mark(factory: Callable) -> Callable:
        factory.traced_options = frozenset(names)
        return factory

    return mark


def at(tables: Any, k: Any) -> Any:
    """Row k (possibly traced) of a NamedTuple of per-call arrays."""
    return jax.tree.map(lambda a: a[k], tables)


def f32(x: Any) -> jax.Array:
    """A host value as a float32 device array (a table or a constant of the loop)."""
    return jnp.asarray(np.asarray(x, np.float32))


def is_traced(value: Any) -> bool:
    """Whether a value is a tracer (inside jit/scan) rather than a concrete value."""
    return isinstance(value, jax.core.Tracer)


def maybe_positive(value: Any) -> bool:
    """True if a (possibly traced) option may be > 0: traced values count as positive."""
    return is_traced(value) or float(np.asarray(value)) > 0


# ----------------------------------------------------------------------------------------
# Validation shared by the factories.


def alphas_cumprod(schedule: Any, sampler: str) -> np.ndarray:
    """The discrete schedule's alphas_cumprod as a concrete float32 host array [T]."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"Sampler {sampler!r} needs a schedule of type DiscreteSchedule; "
            f"got {type(schedule).__name__}."
        )
    try:
        return np.asarray(schedule.alphas_cumprod, np.float32)
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(
            "The schedule must be concrete when sampling: close over it instead of passing it "
            "as an argument of a jitted function (it is a fixed table, not data)."
        ) from e


def check_prediction_type(
    prediction_type: str, sampler: str, allowed: tuple[str, ...] = diffusion.PREDICTION_TYPES
) -> None:
    """Refuse a prediction type that is unknown or that this sampler does not support."""
    diffusion.check_prediction_type(prediction_type)
    if prediction_type not in allowed:
        raise ValueError(
            f"prediction_type {prediction_type!r} is not supported by sampler {sampler!r}; "
            f"allowed: {', '.join(allowed)}."
        )


def check_one_of(value: Any, allowed: tuple, option: str) -> None:
    """Refuse an option value outside ``allowed``."""
    if value not in allowed:
        raise ValueError(
            f"Unknown {option} {value!r}; allowed: {', '.join(str(a) for a in allowed)}."
        )


def check_order(solver_order: Any, allowed: tuple[int, ...] = (1, 2, 3)) -> None:
    """Refuse a multistep solver order outside ``allowed``."""
    if solver_order not in allowed:
        choices = ", ".join(str(a) for a in allowed[:-1]) + f" or {allowed[-1]}"
        raise ValueError(f"solver_order must be {choices}; got {solver_order!r}.")


def check_start(start_step: Any, num_steps: int) -> int:
    """Validate ``start_step`` (the number of grid steps skipped), in [0, num_steps)."""
    if isinstance(start_step, bool) or not isinstance(start_step, int | np.integer):
        raise ValueError(f"start_step must be a Python int; got {start_step!r}.")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, num_steps={num_steps}); got {start_step}.")
    return int(start_step)


# ----------------------------------------------------------------------------------------
# Steps shared by several samplers.


def x0_processor(
    *,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> Callable[[jax.Array], jax.Array]:
    """The x_0 post-processing of diffusers' schedulers as one function.

    Dynamic thresholding (Saharia et al. 2022, Imagen): s = the ``dynamic_thresholding_ratio``
    quantile of |x_0| per sample, clipped to [1, sample_max_value]; x_0 = clip(x_0, -s, s) / s.
    Otherwise, with ``clip_sample``, x_0 is clipped to [-clip_sample_range, clip_sample_range].
    """
    if thresholding:

        def threshold(x0: jax.Array) -> jax.Array:
            flat = jnp.abs(x0.reshape(x0.shape[0], -1))
            s = jnp.quantile(flat, dynamic_thresholding_ratio, axis=1)
            s = diffusion.expand(jnp.clip(s, 1.0, sample_max_value), x0)
            return jnp.clip(x0, -s, s) / s

        return threshold
    if clip_sample:
        return lambda x0: jnp.clip(x0, -clip_sample_range, clip_sample_range)
    return lambda x0: x0


def vp_input(t: jax.Array) -> Callable[..., tuple[State, jax.Array, jax.Array]]:
    """``model_input`` of the samplers whose state x is the model input itself (the
    variance-preserving x_t): call k sees (x, t[k])."""
    return lambda state, k, z: (state, state.x, t[k])


def split_learned_variance(output: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Split a learned-variance output (twice x's channels, last axis) into (mean, variance)."""
    if output.shape[-1] == 2 * x.shape[-1] and output.shape != x.shape:
        return output[..., : x.shape[-1]], output[..., x.shape[-1] :]
    return output, None


def ddpm_step_std(
    variance_type: str,
    v: jax.Array | None,
    output: jax.Array,
    x: jax.Array,
    std_small: jax.Array,
    std_large: jax.Array,
    log_var_small: jax.Array,
    log_var_large: jax.Array,
) -> jax.Array:
    """The standard deviation of a DDPM ancestral step: ``"fixed_small"`` (beta~_t, the
    posterior's), ``"fixed_large"`` (beta_t) or ``"learned_range"`` (the model's ``v`` in
    [-1, 1] interpolating the two log-variances, Nichol & Dhariwal 2021 eq. 15)."""
    if variance_type == "learned_range":
        if v is None:
            raise ValueError(
                "variance_type='learned_range' needs a model output with twice the input "
                f"channels (last axis); got output shape {output.shape} for x {x.shape}."
            )
        frac = (v + 1.0) / 2.0
        return jnp.exp(0.5 * (frac * log_var_large + (1.0 - frac) * log_var_small))
    return std_small if variance_type == "fixed_small" else std_large


def ve_model_input(x: jax.Array, sigma: Any) -> jax.Array:
    """The variance-preserving model input x / sqrt(sigma^2 + 1) of the variable x = x_vp / alpha
    that sigma-space samplers integrate (diffusers' ``scale_model_input``)."""
    return x / jnp.sqrt(sigma**2 + 1.0)


def start_scale(sigma: float, start_step: int, init_noise_sigma: float) -> float:
    """What a sigma-space sampler multiplies its input by: diffusers' ``init_noise_sigma`` for
    pure noise, or 1 / alpha = sqrt(sigma^2 + 1) for a noised image x_t given in the
    variance-preserving form (img2img: x_t / alpha = x_0 + sigma eps, as ``add_noise``)."""
    if start_step == 0:
        return init_noise_sigma
    return float(np.sqrt(np.float64(sigma) ** 2 + 1.0))


def vp_of_sigma(sigma: Any) -> np.ndarray:
    """Variance-preserving [..., 2] (alpha, sigma_vp) of Karras sigmas (float64)."""
    s = np.asarray(sigma, np.float64)
    alpha = 1.0 / np.sqrt(s * s + 1.0)
    return np.stack([alpha, s * alpha], axis=-1)


def vp_of_alphas_cumprod(ac: Any) -> np.ndarray:
    """Variance-preserving [..., 2] (sqrt(ac), sqrt(1 - ac)) (float64)."""
    ac = np.asarray(ac, np.float64)
    return np.stack([np.sqrt(ac), np.sqrt(1.0 - ac)], axis=-1)


# ----------------------------------------------------------------------------------------
# Random numbers.


def draw_noise(key: jax.Array, k: Any, shape: tuple[int, ...], draws: int = 1) -> jax.Array:
    """Standard normal noise for call k: one key, or one key per sample (shape [B]).

    With per-sample keys, sample i's noise depends only on its own key, so an image is the
    same whatever batch it is drawn in. ``draws > 1`` stacks that many independent arrays.
    """
    if draws > 1:
        fold = jax.vmap(jax.random.fold_in, (0, None)) if is_key_batch(key) else jax.random.fold_in
        return jnp.stack([draw_noise(fold(key, 2**31 + j), k, shape) for j in range(draws)])
    if is_key_batch(key):
        return jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, k), shape[1:]))(key)
    return jax.random.normal(jax.random.fold_in(key, k), shape, jnp.float32)


def is_key_batch(key: jax.Array) -> bool:
    """Whether ``key`` holds one PRNG key per sample (typed [B], or raw uint32 [B, 2])."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def check_key(key: Any, batch: int) -> None:
    """Validate a PRNG key argument: one key, or per-sample keys with leading dim B."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if (typed and key.ndim == 0) or (not typed and key.shape == (2,)):
        return
    if (typed and key.shape == (batch,)) or (not typed and key.shape == (batch, 2)):
        return
    raise ValueError(
        f"key must be one PRNG key or one per sample (leading dimension {batch}); "
        f"got shape {key.shape} and dtype {key.dtype}."
    )
