"""The shared sampling driver: host-side plan, one model call per scan iteration.

Every sampler is written the way diffusers' schedulers are driven: a sequence of K model
calls; before call k the sampler says what to feed the model (``model_input``), after it the
sampler folds the output into its state (``update``). Everything that depends only on the
schedule and the step count (timesteps, sigmas, solver coefficients, which order a multistep
solver uses at step k) is computed once on the host in float64/float32 numpy, exactly as the
reference does, and enters the loop as per-call tables. The loop itself is one ``lax.scan``
over those tables, so compile time does not grow with the number of steps, and values such as
the noise, the seed, ``eta`` or a guidance scale are traced (changing them never recompiles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.schedules import DiscreteSchedule

State = dict[str, jax.Array]
Row = dict[str, jax.Array]

# Options every sampler on a discrete schedule understands for x_0 clipping.
THRESHOLD_OPTIONS = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a sampler computed on the host for one (schedule, num_steps, options).

    Attributes:
      tables: per-model-call arrays, each with leading dimension K (the number of calls).
      timesteps: the training timestep given to the model at each call, float64 [K]
        (may be fractional; for samplers whose time depends on traced options, such as EDM
        with churn, this is the time without churn).
      init_scale: the factor applied to the unit-variance starting noise.
      consts: arrays every call sees whole (e.g. a schedule's sigma table).
    """

    tables: dict[str, np.ndarray]
    timesteps: np.ndarray
    init_scale: float
    consts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_model_calls(self) -> int:
        """K, the number of model evaluations."""
        return int(self.timesteps.shape[0])


class Sampler:
    """Base class of a sampler family (see the subclasses for the algorithms).

    Subclasses set ``name``, ``options`` (option name -> default, with diffusers' names),
    ``traced_options`` (options that may be traced arrays), ``prediction_types`` and
    implement ``plan``, ``init_state``, ``model_input`` and ``update``.
    """

    name: str = ""
    options: dict[str, Any] = {}
    traced_options: frozenset[str] = frozenset()
    prediction_types: tuple[str, ...] = diffusion.PREDICTION_TYPES
    schedule_types: tuple[type, ...] = (DiscreteSchedule,)

    def check(self, opts: dict[str, Any], schedule: Any, num_steps: int) -> None:
        """Sampler-specific validation of resolved options (override)."""

    def is_stochastic(self, opts: dict[str, Any]) -> bool:
        """Whether this configuration draws noise during sampling (override)."""
        return False

    def plan(self, schedule: Any, num_steps: int, opts: dict[str, Any]) -> Plan:
        raise NotImplementedError

    def init_state(self, x: jax.Array, opts: dict[str, Any]) -> State:
        """The loop state before the first call; ``x`` is already scaled by init_scale."""
        return {"x": x}

    def model_input(
        self, state: State, row: Row, noise: jax.Array | None, opts: dict[str, Any]
    ) -> tuple[State, jax.Array, jax.Array]:
        """(state, x_in, t) for this call: t is a float32 scalar. A sampler that perturbs x
        before evaluating the model (EDM's churn) returns the perturbed state here."""
        return state, state["x"], row["t"]

    def update(
        self,
        state: State,
        output: jax.Array,
        row: Row,
        noise: jax.Array | None,
        opts: dict[str, Any],
        prediction_type: str,
    ) -> State:
        raise NotImplementedError

    def result(self, state: State) -> jax.Array:
        """The sample at the end of the loop."""
        return state["x"]


# ----------------------------------------------------------------------------------------
# Helpers shared by the samplers.


def is_traced(value: Any) -> bool:
    """Whether a value is a tracer (inside jit/scan) rather than a concrete value."""
    return isinstance(value, jax.core.Tracer)


def maybe_positive(value: Any) -> bool:
    """True if a (possibly traced) option may be > 0: traced values count as positive."""
    return is_traced(value) or float(np.asarray(value)) > 0


def f32(x: Any) -> np.ndarray:
    """Host float32 array."""
    return np.asarray(x, np.float32)


def host_alphas_cumprod(schedule: DiscreteSchedule) -> np.ndarray:
    """The schedule's alphas_cumprod as a concrete float32 host array (clear error if traced)."""
    try:
        return np.asarray(schedule.alphas_cumprod, np.float32)
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(
            "The schedule must be concrete when sampling: close over it instead of passing it "
            "as an argument of a jitted function (it is a fixed table, not data)."
        ) from e


def sigma_table(alphas_cumprod: np.ndarray, *, zero_snr_fix: bool = True) -> np.ndarray:
    """sqrt((1 - ac) / ac) in float32 as diffusers' sigma schedulers compute it [T].

    A zero-terminal-SNR schedule has ac[-1] == 0; like diffusers' sigma-space schedulers we
    replace it by 2**-24 so that the first sigma is finite.
    """
    ac = np.array(alphas_cumprod, np.float32)
    if zero_snr_fix and ac[-1] == 0.0:
        ac[-1] = np.float32(2.0**-24)
    return ((np.float32(1.0) - ac) / ac) ** np.float32(0.5)


def threshold_x0(x0: jax.Array, opts: Mapping[str, Any]) -> jax.Array:
    """Dynamic thresholding (Saharia et al. 2022) or plain clipping of an x_0 prediction."""
    if opts.get("thresholding", False):
        flat = jnp.abs(x0.reshape(x0.shape[0], -1))
        s = jnp.quantile(flat, opts["dynamic_thresholding_ratio"], axis=1)
        s = jnp.clip(s, 1.0, opts["sample_max_value"])
        s = diffusion.expand(s, x0)
        return jnp.clip(x0, -s, s) / s
    if opts.get("clip_sample", False):
        r = opts["clip_sample_range"]
        return jnp.clip(x0, -r, r)
    return x0


def x0_eps_from_output(
    output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """(x_0, eps) from a model output, in diffusers' operation order (float32)."""
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha, output
    if prediction_type == "sample":
        return output, (x - alpha * output) / sigma
    return alpha * x - sigma * output, alpha * output + sigma * x


def split_learned_variance(output: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Split a learned-variance output (twice x's channels, last axis) into (mean, variance)."""
    if output.shape[-1] == 2 * x.shape[-1] and output.shape != x.shape:
        return output[..., : x.shape[-1]], output[..., x.shape[-1] :]
    return output, None


def rows_at(
    tables: Mapping[str, jax.Array], k: Any, consts: Mapping[str, jax.Array] | None = None
) -> Row:
    """The per-call row k of the tables (k may be traced), plus the whole-run constants."""
    return {**{name: value[k] for name, value in tables.items()}, **(consts or {})}


def draw_noise(key: jax.Array, k: Any, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise for call k: one key, or one key per sample (shape [B]).

    With per-sample keys, sample i's noise depends only on its own key, so an image is the
    same whatever batch it is drawn in.
    """
    if _is_key_batch(key, shape[0]):
        return jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, k), shape[1:]))(key)
    return jax.random.normal(jax.random.fold_in(key, k), shape, jnp.float32)


def _is_key_batch(key: jax.Array, batch: int) -> bool:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2  # raw uint32 keys: [2] single, [B, 2] per sample


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


ModelFn = Callable[..., jax.Array]
