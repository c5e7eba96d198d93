"""Noise schedules: discrete beta tables (diffusers' names and numerics) and continuous logSNR.

Discrete schedules are built on the host with numpy so that ``alphas_cumprod`` matches
diffusers' PyTorch schedulers to the last bit (float32 betas, cumulative product accumulated
in float64 and rounded once, as torch's CPU ``cumprod`` does). They are pytrees, so they can be
closed over or passed into jitted functions; the helpers ``alpha``, ``sigma`` and ``log_snr``
accept integer or fractional timesteps.

Continuous-time schedules (:class:`VPLinearSchedule`, :class:`CosineSchedule`,
:class:`EDMSchedule`) are parameterised by their own time variable and expose the same
``alpha`` / ``sigma`` / ``log_snr`` helpers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine", "sigmoid", "laplace")

ArrayLike = jax.Array | np.ndarray | float | int


def torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num, dtype=torch.float32)`` reproduced bit for bit.

    torch computes ``step = (end - start) / (num - 1)`` in float32, fills the first half as
    ``start + step * i`` and the second half as ``end - step * (num - 1 - i)``, each with one
    rounding (a fused multiply-add). The float32 x float32 product is exact in float64, so one
    float64 operation followed by a cast reproduces the fused result.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([start32], np.float32)
    step = np.float32((end32 - start32) / np.float32(num - 1))
    i = np.arange(num, dtype=np.float64)
    lo = (np.float64(start32) + np.float64(step) * i).astype(np.float32)
    hi = (np.float64(end32) - np.float64(step) * (num - 1 - i)).astype(np.float32)
    return np.where(np.arange(num) < num // 2, lo, hi).astype(np.float32)


def _betas_for_alpha_bar(num: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Betas discretising a cumulative-alpha function on [0, 1] (computed in float64)."""
    betas = [min(1.0 - alpha_bar((i + 1) / num) / alpha_bar(i / num), max_beta) for i in range(num)]
    return np.asarray(betas, np.float64).astype(np.float32)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), in float32.

    Keeps ``sqrt(alphas_cumprod[0])`` and shifts/scales ``sqrt(alphas_cumprod)`` so that its
    last value is exactly 0.
    """
    betas = np.asarray(betas, np.float32)
    alphas_cumprod = _cumprod_f32(np.float32(1.0) - betas)
    sqrt_ab = np.sqrt(alphas_cumprod)
    first, last = sqrt_ab[0].copy(), sqrt_ab[-1].copy()
    sqrt_ab = sqrt_ab - last
    sqrt_ab = sqrt_ab * (first / (first - last))
    alphas_bar = sqrt_ab**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    # torch's CPU cumprod accumulates float32 inputs in float64 and rounds each output once.
    return np.cumprod(np.asarray(x, np.float32).astype(np.float64)).astype(np.float32)


def make_betas(
    name: str,
    num_train_timesteps: int = 1000,
    *,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> np.ndarray:
    """The float32 beta table of a named schedule, as diffusers builds it.

    Args:
      name: one of ``BETA_SCHEDULES``: "linear", "scaled_linear" (linear in sqrt(beta), the
        latent-diffusion schedule), "squaredcos_cap_v2" (alias "cosine"; Nichol & Dhariwal
        2021), "sigmoid" (GeoDiff), "laplace".
      num_train_timesteps: number of training timesteps T (>= 1).
      beta_start: first beta (linear, scaled_linear, sigmoid).
      beta_end: last beta (linear, scaled_linear, sigmoid).

    Returns:
      float32 array [T].
    """
    if name not in BETA_SCHEDULES:
        raise ValueError(f"Unknown beta schedule {name!r}; allowed: {', '.join(BETA_SCHEDULES)}.")
    _check_timesteps(num_train_timesteps)
    if name in ("linear", "scaled_linear", "sigmoid"):
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(
                f"Need 0 < beta_start < beta_end < 1 for schedule {name!r}; got "
                f"beta_start={beta_start}, beta_end={beta_end}."
            )
    if name == "linear":
        return torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    if name == "scaled_linear":
        return torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    if name in ("squaredcos_cap_v2", "cosine"):
        return _betas_for_alpha_bar(num_train_timesteps, _cosine_alpha_bar)
    if name == "laplace":
        return _betas_for_alpha_bar(num_train_timesteps, _laplace_alpha_bar)
    # sigmoid: float32 throughout, as torch.sigmoid on a float32 linspace.
    x = torch_linspace_f32(-6.0, 6.0, num_train_timesteps)
    sig = (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    return (sig * np.float32(beta_end - beta_start) + np.float32(beta_start)).astype(np.float32)


def _check_timesteps(num_train_timesteps: int) -> None:
    if not isinstance(num_train_timesteps, int | np.integer) or num_train_timesteps < 1:
        raise ValueError(
            f"num_train_timesteps must be an integer >= 1; got {num_train_timesteps!r}."
        )


@struct.dataclass
class DiscreteSchedule:
    """A discrete-time variance-preserving schedule: x_t = alpha_t x_0 + sigma_t eps.

    Attributes:
      betas: float32 [T].
      alphas_cumprod: float32 [T]; alpha_t^2 at integer timestep t in [0, T).
      name: the beta schedule's name ("trained" for explicit betas); static metadata that
        some samplers use to reproduce diffusers' per-schedule rules.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    name: str = struct.field(pytree_node=False, default="")

    @property
    def num_train_timesteps(self) -> int:
        """Number of training timesteps T."""
        return self.alphas_cumprod.shape[0]

    def karras_sigmas(self) -> jax.Array:
        """sigma_t / alpha_t = sqrt((1 - alphas_cumprod) / alphas_cumprod) at integer t, [T]."""
        ac = jnp.asarray(self.alphas_cumprod, jnp.float32)
        return jnp.sqrt((1.0 - ac) / ac)

    def karras_sigma(self, t: ArrayLike) -> jax.Array:
        """sigma/alpha at (possibly fractional) t, linear in t between integers.

        This is the interpolation diffusers' sigma-space schedulers use
        (``np.interp(t, arange(T), sigmas)``); at integer t it is exact.
        """
        t = jnp.asarray(t, jnp.float32)
        sig = self.karras_sigmas()
        t = jnp.clip(t, 0.0, self.num_train_timesteps - 1)
        lo = jnp.floor(t).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, self.num_train_timesteps - 1)
        w = t - lo
        return (1.0 - w) * sig[lo] + w * sig[hi]

    def alpha(self, t: ArrayLike) -> jax.Array:
        """alpha_t = sqrt(alphas_cumprod[t]); fractional t interpolates sigma/alpha linearly."""
        return _alpha_from(self, t)

    def sigma(self, t: ArrayLike) -> jax.Array:
        """sigma_t = sqrt(1 - alphas_cumprod[t]); fractional t as in :meth:`alpha`."""
        return _sigma_from(self, t)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        """log(alpha_t^2 / sigma_t^2); fractional t as in :meth:`alpha`."""
        t = jnp.asarray(t)
        if jnp.issubdtype(t.dtype, jnp.integer):
            ac = jnp.asarray(self.alphas_cumprod, jnp.float32)[t]
            return jnp.log(ac) - jnp.log1p(-ac)
        return -2.0 * jnp.log(self.karras_sigma(t))

    def snr(self, t: ArrayLike) -> jax.Array:
        """alpha_t^2 / sigma_t^2 (0 at a zero-terminal-SNR final step)."""
        t = jnp.asarray(t)
        if jnp.issubdtype(t.dtype, jnp.integer):
            ac = jnp.asarray(self.alphas_cumprod, jnp.float32)[t]
            return ac / (1.0 - ac)
        return 1.0 / jnp.square(self.karras_sigma(t))


def _alpha_from(s: DiscreteSchedule, t: ArrayLike) -> jax.Array:
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jnp.integer):
        return jnp.sqrt(jnp.asarray(s.alphas_cumprod, jnp.float32)[t])
    return jax.lax.rsqrt(1.0 + jnp.square(s.karras_sigma(t)))


def _sigma_from(s: DiscreteSchedule, t: ArrayLike) -> jax.Array:
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jnp.integer):
        return jnp.sqrt(1.0 - jnp.asarray(s.alphas_cumprod, jnp.float32)[t])
    k = s.karras_sigma(t)
    return k * jax.lax.rsqrt(1.0 + jnp.square(k))


def make_schedule(
    name: str = "linear",
    num_train_timesteps: int = 1000,
    *,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: np.ndarray | list[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> DiscreteSchedule:
    """Build a discrete schedule by diffusers' name (or from explicit betas).

    Args:
      name: beta schedule name, one of ``BETA_SCHEDULES`` (ignored with ``trained_betas``).
      num_train_timesteps: T (ignored with ``trained_betas``, which sets T = len(betas)).
      beta_start: first beta for the linear-type schedules.
      beta_end: last beta for the linear-type schedules.
      trained_betas: explicit betas, each in (0, 1].
      rescale_betas_zero_snr: rescale to zero terminal SNR (Lin et al. 2023), making
        ``alphas_cumprod[-1] == 0``.

    Returns:
      A :class:`DiscreteSchedule` with float32 ``betas`` and ``alphas_cumprod``.

    Example:
      >>> s = make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
      >>> s.num_train_timesteps
      1000
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float32)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"trained_betas must be a non-empty 1-D array; got {betas.shape}.")
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("trained_betas must all lie in (0, 1].")
    else:
        betas = make_betas(name, num_train_timesteps, beta_start=beta_start, beta_end=beta_end)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = _cumprod_f32(np.float32(1.0) - betas)
    return DiscreteSchedule(
        betas=jnp.asarray(betas),
        alphas_cumprod=jnp.asarray(alphas_cumprod),
        name="trained" if trained_betas is not None else name,
    )


# ----------------------------------------------------------------------------------------
# Continuous-time schedules.


@struct.dataclass
class VPLinearSchedule:
    """Continuous VP schedule with linear beta(t) (Song et al. 2021), t in [0, 1].

    alpha_t^2 = exp(-B(t)), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2;
    logSNR(t) = -log(expm1(B(t))).
    """

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        """logSNR(t), numerically stable through expm1."""
        t = jnp.asarray(t, jnp.float32)
        b = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return -jnp.log(jnp.expm1(b))

    def alpha(self, t: ArrayLike) -> jax.Array:
        """alpha_t = sqrt(sigmoid(logSNR))."""
        return jnp.exp(0.5 * jax.nn.log_sigmoid(self.log_snr(t)))

    def sigma(self, t: ArrayLike) -> jax.Array:
        """sigma_t = sqrt(sigmoid(-logSNR))."""
        return jnp.exp(0.5 * jax.nn.log_sigmoid(-self.log_snr(t)))


@struct.dataclass
class CosineSchedule:
    """Continuous cosine schedule in logSNR form, t in [0, 1] (Nichol & Dhariwal 2021).

    logSNR(t) = -2 log tan(a + t (b - a)) with a, b chosen so that logSNR spans
    [logsnr_min, logsnr_max]; optionally shifted for resolution (Hoogeboom et al. 2023,
    "simple diffusion"): logSNR += 2 log(base_resolution / resolution).
    """

    logsnr_min: float = struct.field(pytree_node=False, default=-15.0)
    logsnr_max: float = struct.field(pytree_node=False, default=15.0)
    resolution: int | None = struct.field(pytree_node=False, default=None)
    base_resolution: int = struct.field(pytree_node=False, default=64)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        """logSNR(t), including the resolution shift when ``resolution`` is set."""
        t = jnp.asarray(t, jnp.float32)
        t_min = math.atan(math.exp(-0.5 * self.logsnr_max))
        t_max = math.atan(math.exp(-0.5 * self.logsnr_min))
        out = -2.0 * jnp.log(jnp.tan(t_min + t * (t_max - t_min)))
        if self.resolution is not None:
            out = out + 2.0 * math.log(self.base_resolution / self.resolution)
        return out

    def alpha(self, t: ArrayLike) -> jax.Array:
        """alpha_t = sqrt(sigmoid(logSNR))."""
        return jnp.exp(0.5 * jax.nn.log_sigmoid(self.log_snr(t)))

    def sigma(self, t: ArrayLike) -> jax.Array:
        """sigma_t = sqrt(sigmoid(-logSNR))."""
        return jnp.exp(0.5 * jax.nn.log_sigmoid(-self.log_snr(t)))


@struct.dataclass
class EDMSchedule:
    """EDM (Karras et al. 2022): x = x_0 + sigma n, with time t := sigma.

    In the variance-preserving form used by samplers, alpha = 1/sqrt(1 + sigma^2) and
    sigma_vp = sigma/sqrt(1 + sigma^2); logSNR = -2 log sigma. Training draws
    ln(sigma) ~ N(P_mean, P_std^2).
    """

    sigma_min: float = struct.field(pytree_node=False, default=0.002)
    sigma_max: float = struct.field(pytree_node=False, default=80.0)
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    rho: float = struct.field(pytree_node=False, default=7.0)
    p_mean: float = struct.field(pytree_node=False, default=-1.2)
    p_std: float = struct.field(pytree_node=False, default=1.2)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        """logSNR = -2 log sigma (t is sigma)."""
        return -2.0 * jnp.log(jnp.asarray(t, jnp.float32))

    def alpha(self, t: ArrayLike) -> jax.Array:
        """1 / sqrt(1 + sigma^2)."""
        return jax.lax.rsqrt(1.0 + jnp.square(jnp.asarray(t, jnp.float32)))

    def sigma(self, t: ArrayLike) -> jax.Array:
        """sigma / sqrt(1 + sigma^2)."""
        t = jnp.asarray(t, jnp.float32)
        return t * jax.lax.rsqrt(1.0 + jnp.square(t))

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Training sigmas: exp(P_mean + P_std n), n ~ N(0, 1)."""
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, shape, jnp.float32))

    def loss_weight(self, sigma: ArrayLike) -> jax.Array:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        sigma = jnp.asarray(sigma, jnp.float32)
        sd2 = self.sigma_data**2
        return (jnp.square(sigma) + sd2) / (jnp.square(sigma) * sd2)


ContinuousSchedule = VPLinearSchedule | CosineSchedule | EDMSchedule
Schedule = DiscreteSchedule | ContinuousSchedule
