"""diffusers' AutoencoderKL checkpoints loaded by jaxdiff give diffusers' outputs (fixtures:
tests/fixtures/vae/generate.py).

Tolerance: max |jaxdiff - diffusers| <= 2e-5 * std(output) for the posterior mean, logvar and
decoder output (jaxdiff in float32, diffusers in float64 on the same float32 weights); the KL
per example to 1e-5 relative. Measured: at most 4e-6; GroupNorm epsilon 1e-5 instead of
diffusers' 1e-6 gives 4e-5 to 1.6e-4, so the tolerance is kept below the usual 1e-4.
"""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.models import (
    AutoencoderKL,
    export_diffusers_vae,
    load_diffusers_vae,
    load_flax_diffusers_vae,
)
from jaxdiff.models.convert_vae import vae_kwargs, vae_param_shapes
from jaxdiff.models.state_dict import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME, to_torch, torch_key

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "vae")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "unet"))
from random_weights import random_params  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # these tests check numbers, not speed
LOGVAR_MAX = 20.0
TOLERANCE = 2e-5


def _io(name):
    return dict(np.load(os.path.join(FIXTURES, name, "io.npz")))


def _outputs(module, params, io):
    def run(p, x, z):
        post = module.apply({"params": p}, x, method="encode")
        return post.mean, post.logvar, post.kl(), module.apply({"params": p}, z, method="decode")

    out = jax.jit(run, compiler_options=FAST_COMPILE)(params, io["x"], io["z"])
    return dict(zip(("mean", "logvar", "kl", "decoded"), map(np.asarray, out), strict=True))


def _assert_parity(out, io, name):
    for key in ("mean", "logvar", "decoded"):
        ref = io[key]
        # Clipped log-variances are exact on both sides; the scale is that of the rest.
        scale = ref[ref < LOGVAR_MAX].std() if key == "logvar" else ref.std()
        err = np.abs(out[key] - ref).max() / scale
        assert out[key].shape == ref.shape, key
        assert err <= TOLERANCE, f"{name} {key}: max |jaxdiff - diffusers| = {err:.2e} x std"
    np.testing.assert_allclose(out["kl"], io["kl"], rtol=1e-5, err_msg=f"{name} kl")


@pytest.mark.parametrize("name", ["sd_like", "deep", "sd3_like"])
def test_torch_checkpoint_parity(name):
    module, params = load_diffusers_vae(os.path.join(FIXTURES, name))
    _assert_parity(_outputs(module, params, _io(name)), _io(name), name)


def test_fixtures_cover_the_configurations():
    sd, deep, sd3 = (load_diffusers_vae(os.path.join(FIXTURES, n))[0]
                     for n in ("sd_like", "deep", "sd3_like"))  # fmt: skip
    assert sd.use_quant_conv and sd.use_post_quant_conv and sd.mid_attention
    assert sd.latent_channels == 4 and sd.downsampling_factor == 4
    assert deep.layers_per_block == 3 and not deep.mid_attention
    assert (deep.in_channels, deep.out_channels) == (2, 3)
    assert deep.latents_mean == (0.1, -0.2, 0.3) and deep.latents_std == (1.5, 0.5, 2.0)
    assert sd3.latent_channels == 16 and sd3.shift_factor == pytest.approx(0.0609)
    assert not sd3.use_quant_conv and not sd3.use_post_quant_conv
    assert (_io("sd_like")["logvar"] == LOGVAR_MAX).any()  # the clip is exercised


def test_flax_msgpack_checkpoint_parity():
    module, params = load_flax_diffusers_vae(os.path.join(FIXTURES, "flax_vae"))
    _assert_parity(_outputs(module, params, _io("flax_vae")), _io("flax_vae"), "flax_vae")


def test_export_loads_in_diffusers_with_the_same_outputs(tmp_path):
    """The generator exported this model and ran it with diffusers; its export is unchanged."""
    src = os.path.join(FIXTURES, "jaxdiff_export")
    io = _io("jaxdiff_export")
    with open(os.path.join(src, CONFIG_NAME)) as f:
        config = json.load(f)
    module = AutoencoderKL(**vae_kwargs(config))
    x0 = np.zeros((1, 4, 4, module.in_channels), np.float32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x0))["params"]
    params = random_params(shapes, int(io["seed"]))
    export_diffusers_vae(module, params, tmp_path)
    with open(tmp_path / CONFIG_NAME) as f:
        assert json.load(f) == config
    _assert_parity(_outputs(module, params, io), io, "jaxdiff_export")


def test_bin_checkpoint_gives_the_same_parameters(tmp_path):
    src = os.path.join(FIXTURES, "deep")
    for name in (CONFIG_NAME, BIN_NAME):
        shutil.copy(os.path.join(src, name), tmp_path / name)
    _, from_bin = load_diffusers_vae(tmp_path)
    _, from_st = load_diffusers_vae(src)
    for a, b in zip(jax.tree.leaves(from_bin), jax.tree.leaves(from_st), strict=True):
        np.testing.assert_array_equal(a, b)


def test_legacy_attention_names_and_pipeline_directory(tmp_path):
    """Checkpoints from before diffusers 0.14 name the attention query / key / value / proj_attn;
    a pipeline directory holds the VAE in vae/."""
    src = os.path.join(FIXTURES, "sd_like")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(os.path.join(src, SAFETENSORS_NAME))
    renamed = {}
    for key, value in state.items():
        for new, old in legacy.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    os.makedirs(tmp_path / "vae")
    shutil.copy(os.path.join(src, CONFIG_NAME), tmp_path / "vae" / CONFIG_NAME)
    save_file(renamed, str(tmp_path / "vae" / SAFETENSORS_NAME))
    _, old = load_diffusers_vae(tmp_path)
    _, new = load_diffusers_vae(src)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd3", "flux1"])
def test_published_vae_configs_have_diffusers_parameter_names_and_shapes(name):
    """The Stable Diffusion 1.5 / SDXL / SD3 / FLUX.1 VAE configs (no weights committed)."""
    with open(os.path.join(FIXTURES, "architectures.json")) as f:
        arch = json.load(f)[name]
    module = AutoencoderKL(**vae_kwargs(arch["config"]))
    shapes = {torch_key(p): list(to_torch(np.zeros(s, np.int8), p[-1]).shape)
              for p, s in vae_param_shapes(module).items()}  # fmt: skip
    assert shapes == arch["shapes"]
