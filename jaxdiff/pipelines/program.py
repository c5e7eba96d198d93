"""The compiled generation program of every Stable Diffusion pipeline.

One jitted function, `generate`, runs a whole batch: text encoding of prompts and negative
prompts in one call per encoder (SD: the last hidden state, or with ``clip_skip`` an earlier
layer through the final norm; SDXL: both encoders' penultimate layers concatenated and the
second one's projected pooled output), the image encoding of image-to-image and inpainting
(one VAE call), the sampler loop (one ``lax.scan``, classifier-free guidance in
one batched U-Net call), and the VAE decoder. Its static argument, a `Program`, holds
everything that changes the computation (models, sampler, step count, task); prompts (as
token ids), negative prompts, guidance scale and rescale, seeds, noise, images and masks are
arrays, so changing them never recompiles. The batch is split over the devices of a
``jax.sharding.Mesh`` with ``jax.shard_map`` (each device runs its images independently; no
communication), so results do not depend on the number of devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxdiff.guidance import classifier_free_guidance
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.text_ops import LayerNorm
from jaxdiff.models.unet import UNet
from jaxdiff.pipelines.schedulers import SamplerChoice

AXIS = "data"
# Streams of each image's key: initial / added noise, sampler noise, the two VAE samples.
NOISE, SAMPLER, IMAGE_NOISE, MASKED_IMAGE_NOISE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Program:
    """What shapes one compiled program (hashable: the cache key of `generate`).

    Attributes:
      unet / vae / text_encoders: the modules (their parameters are arguments).
      sampler: the sampler, its options, schedule and prediction type.
      num_steps: inference steps of the full grid; start_step: grid steps skipped (img2img).
      sdxl: SDXL text conditioning (two encoders, pooled embedding, time ids).
      clip_skip: layers skipped from the end of the text encoder (None: diffusers' default).
      task: "text", "image" (image-to-image) or "inpaint".
      blend: for inpainting with a 4-channel U-Net, per model call the (alpha, sigma, scale)
        of the next call's noise level in the sampler's state, ``(1, 0, 1)`` after the last
        call: the known region is reset to the image noised to that level (None: no blend).
      latent_stats: normalise latents with the VAE's latents_mean / latents_std (SDXL);
        otherwise with its scaling factor only (SD).
      output_type: "np" (images in [0, 1]) or "latent".
      mesh: the devices, one mesh axis named "data".
    """

    unet: UNet
    vae: AutoencoderKL
    text_encoders: tuple
    sampler: SamplerChoice
    num_steps: int
    start_step: int
    sdxl: bool
    clip_skip: int | None
    task: str
    blend: tuple | None
    latent_stats: bool
    output_type: str
    mesh: Mesh


def _final_norm(encoder, params, hidden):
    norm = LayerNorm(encoder.layer_norm_eps, dtype=encoder.dtype, param_dtype=encoder.param_dtype)
    return norm.apply({"params": params["final_layer_norm"]}, hidden)


def _halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    b = x.shape[0] // 2
    return x[:b], x[b:]


def encode_sd(encoder, params, ids, neg_ids, clip_skip: int | None):
    """SD 1.x / 2.x embeddings [B, L, D] of prompt and negative-prompt token ids [B, L]
    (one encoder call on both; diffusers encodes negative prompts without clip_skip)."""
    out = encoder.apply({"params": params}, jnp.concatenate([ids, neg_ids]))
    _, uncond = _halves(out.last_hidden_state)
    if clip_skip is None:
        cond, _ = _halves(out.last_hidden_state)
    else:
        cond = _final_norm(encoder, params, _halves(out.hidden_states[-(clip_skip + 1)])[0])
    return cond, uncond


def encode_sdxl(encoders, params, ids, neg_ids, clip_skip: int | None):
    """SDXL embeddings [B, L, D1 + D2] and pooled embeddings [B, P] of prompts and negative
    prompts (each encoder's token ids [B, L]; negatives always use the penultimate layer, as
    in diffusers)."""
    layer = -2 if clip_skip is None else -(clip_skip + 2)
    cond, uncond, out = [], [], None
    for encoder, p, i, n in zip(encoders, params, ids, neg_ids, strict=True):
        out = encoder.apply({"params": p}, jnp.concatenate([i, n]))
        cond.append(_halves(out.hidden_states[layer])[0])
        uncond.append(_halves(out.hidden_states[-2])[1])
    pooled, neg_pooled = _halves(out.text_embeds)
    return (jnp.concatenate(cond, -1), pooled), (jnp.concatenate(uncond, -1), neg_pooled)


def to_latents(vae: AutoencoderKL, z: jax.Array, stats: bool) -> jax.Array:
    """Diffusion latents of VAE latents z, as the SD (scale) or SDXL (stats) pipelines do."""
    if stats and vae.latents_mean is not None and vae.latents_std is not None:
        mean, std = jnp.asarray(vae.latents_mean), jnp.asarray(vae.latents_std)
        return (z - mean) * vae.scaling_factor / std
    return z * vae.scaling_factor


def from_latents(vae: AutoencoderKL, latents: jax.Array, stats: bool) -> jax.Array:
    """The inverse of `to_latents`."""
    if stats and vae.latents_mean is not None and vae.latents_std is not None:
        mean, std = jnp.asarray(vae.latents_mean), jnp.asarray(vae.latents_std)
        return latents * std / vae.scaling_factor + mean
    return latents / vae.scaling_factor


def _encode_images(prog: Program, params, images: jax.Array, eps: jax.Array) -> jax.Array:
    """Posterior samples mean + std eps of images [N, H, W, 3] (in [-1, 1]) as latents."""
    post = prog.vae.apply({"params": params}, images.astype(prog.vae.dtype), method="encode")
    z = post.mean + jnp.exp(0.5 * post.logvar) * eps
    return to_latents(prog.vae, z, prog.latent_stats)


def _conditions(prog: Program, params, batch) -> tuple[dict, dict]:
    """The U-Net conditions of the prompts and of the negative prompts."""
    if not prog.sdxl:
        cond, uncond = encode_sd(prog.text_encoders[0], params["text"][0], batch["ids"][0],
                                 batch["neg_ids"][0], prog.clip_skip)  # fmt: skip
        return {"context": cond}, {"context": uncond}
    (ctx, pooled), (nctx, npooled) = encode_sdxl(
        prog.text_encoders, params["text"], batch["ids"], batch["neg_ids"], prog.clip_skip
    )
    keep = 1.0 - batch["zero_negative"]  # force_zeros_for_empty_prompt: zero negatives
    nctx = nctx * keep[:, None, None].astype(nctx.dtype)
    npooled = npooled * keep[:, None].astype(npooled.dtype)
    cond = {"context": ctx, "text_embeds": pooled, "time_ids": batch["time_ids"]}
    uncond = {"context": nctx, "text_embeds": npooled, "time_ids": batch["neg_time_ids"]}
    return cond, uncond


def _image_conditions(prog: Program, params, batch):
    """(image latents or None, latent mask or None, extra U-Net input or None)."""
    if prog.task == "text":
        return None, None, None
    need_image = prog.start_step > 0 or prog.blend is not None
    images, eps = [], []
    if need_image:
        images.append(batch["image"]), eps.append(batch["image_noise"])
    mask = extra = None
    if prog.task == "inpaint":
        f = prog.vae.downsampling_factor
        mask = batch["mask"][:, ::f, ::f].astype(jnp.float32)  # nearest, as diffusers
        if prog.blend is None:  # 9-channel U-Net: the masked image's latents are an input
            images.append(batch["image"] * (batch["mask"] < 0.5))
            eps.append(batch["masked_image_noise"])
    if not images:
        return None, mask, None
    latents = _encode_images(prog, params, jnp.concatenate(images), jnp.concatenate(eps))
    parts = jnp.split(latents, len(images))
    if prog.task == "inpaint" and prog.blend is None:
        extra = jnp.concatenate([mask, parts[-1]], axis=-1)
    return (parts[0] if need_image else None), mask, extra


def _local(prog: Program, params, scalars, batch) -> jax.Array:
    """One device's share of the batch (see the module docstring)."""
    cond, uncond = _conditions(prog, params, batch)
    keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(
        batch["seed"], batch["index"]
    )
    sampler_keys = jax.vmap(lambda k: jax.random.fold_in(k, SAMPLER))(keys)
    traced = {"eta": scalars["eta"]} if prog.sampler.name == "ddim" else {}
    loop = prog.sampler.loop(prog.num_steps, start_step=prog.start_step, **traced)
    noise = batch["latents"].astype(jnp.float32)
    image_latents, mask, extra = _image_conditions(prog, params["vae"], batch)
    if extra is not None:
        cond, uncond = {**cond, "extra": extra}, {**uncond, "extra": extra}
    x = noise if prog.start_step == 0 else loop.add_noise(image_latents, noise)

    def unet_fn(x, t, context, extra=None, **added):
        if extra is not None:
            x = jnp.concatenate([x, extra.astype(x.dtype)], axis=-1)
        return prog.unet.apply({"params": params["unet"]}, x, t, context=context, **added)

    guided = classifier_free_guidance(unet_fn, uncond=uncond)
    # Guidance is off for scales <= 1 in diffusers: a scale of 1 gives the conditional output.
    scale = jnp.where(batch["scale"] > 1.0, batch["scale"], 1.0)
    blend = None if prog.blend is None else jnp.asarray(prog.blend, jnp.float32)

    def body(state, k):
        state, x_in, t = loop.model_input(state, k, key=sampler_keys)
        out = guided(x_in, t, **cond, guidance_scale=scale, guidance_rescale=batch["rescale"])
        state = loop.step(state, k, out, key=sampler_keys)
        if blend is not None:
            a, s, c = blend[k]
            known = c * (a * image_latents + s * noise)
            state = state._replace(x=(1.0 - mask) * known + mask * state.x)
        return state, None

    state, _ = jax.lax.scan(body, loop.init(x), jnp.arange(loop.num_model_calls))
    latents = loop.result(state)
    if prog.output_type == "latent":
        return latents
    z = from_latents(prog.vae, latents, prog.latent_stats)
    image = prog.vae.apply({"params": params["vae"]}, z.astype(prog.vae.dtype), method="decode")
    return jnp.clip(image.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def generate(prog: Program, params: dict, scalars: dict, batch: dict) -> jax.Array:
    """Images [B, H, W, 3] in [0, 1] (or latents) for one batch (see the module docstring).

    Args:
      prog: the static `Program`.
      params: {"unet", "vae", "text": (one per encoder)}, replicated on ``prog.mesh``.
      scalars: {"eta"} replicated scalars.
      batch: per-image arrays with leading dimension B (a multiple of the mesh size):
        ``ids`` / ``neg_ids`` (tuples of [B, L] int32), ``scale`` / ``rescale`` [B],
        ``seed`` / ``index`` [B] uint32, ``latents`` [B, h, w, C] noise, and as the task needs
        ``zero_negative`` [B], ``time_ids`` / ``neg_time_ids`` [B, M], ``image``
        [B, H, W, 3] in [-1, 1], ``image_noise`` / ``masked_image_noise`` [B, h, w, C],
        ``mask`` [B, H, W, 1] (1 = repaint).
    """
    run = jax.shard_map(
        functools.partial(_local, prog), mesh=prog.mesh,
        in_specs=(P(), P(), P(AXIS)), out_specs=P(AXIS),
        # No collectives: the samplers' zero-initialised histories need no varying-axis
        # bookkeeping.
        check_vma=False,
    )  # fmt: skip
    return run(params, scalars, batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def draw_noise(shape: tuple[int, ...], stream: int, seed: jax.Array, index: jax.Array):
    """Standard normal noise [B, *shape] for image i from (seed[i], index[i], stream)."""

    def one(s, i):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(s), i), stream)
        return jax.random.normal(key, shape, jnp.float32)

    return jax.vmap(one)(seed, index)


@functools.lru_cache(maxsize=64)
def blend_levels(sampler: SamplerChoice, num_steps: int, start_step: int) -> tuple:
    """Per model call, the (alpha, sigma, state scale) of the next call's noise level.

    Used by inpainting with an ordinary U-Net: diffusers resets the known region after every
    step to the image noised to the next timestep, in the sampler's own variable (the
    variance-preserving x for DDIM-like samplers, x / alpha for the sigma-space ones). The
    scale is read from the sampler itself: what its ``init`` multiplies a noised image by.

    Raises:
      ValueError: for samplers with more calls than steps (Heun; PNDM, whose PLMS warm-up
        calls the model twice at the first step), whose intermediate states diffusers blends
        differently.
    """
    loop = sampler.loop(num_steps, start_step=start_step)
    if loop.num_model_calls != num_steps - start_step:
        raise ValueError(
            f"inpainting with a {loop.name!r} sampler ({loop.num_model_calls} model calls for "
            f"{num_steps - start_step} steps) and an ordinary (4-channel) U-Net is not "
            "supported: the known region is blended once per step; use a sampler with one "
            "call per step (ddim, ddpm, dpm_solver, unipc, deis, euler, euler_ancestral, lcm)."
        )
    levels = []
    for k in range(start_step + 1, num_steps):
        nxt = sampler.loop(num_steps, start_step=k)
        alpha, sigma = nxt.sampler.alpha_sigma_start
        scale = float(nxt.init(jnp.ones((1, 1, 1, 1))).x.reshape(-1)[0])
        levels.append((alpha, sigma, scale))
    return tuple(levels) + ((1.0, 0.0, 1.0),)
