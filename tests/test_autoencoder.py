"""AutoencoderKL: posterior and latent scaling against closed forms, exact export / import
round trips, and clear errors for bad inputs, configs and checkpoints."""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.models import (
    AutoencoderKL,
    DiagonalGaussian,
    export_diffusers_vae,
    load_diffusers_vae,
    load_flax_diffusers_vae,
)
from jaxdiff.models.state_dict import CONFIG_NAME, SAFETENSORS_NAME

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "vae")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "unet"))
from random_weights import random_params  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}
SMALL = dict(channels=(4, 8), norm_groups=2, latent_channels=2)


def _params(module, seed=0):
    f = module.downsampling_factor
    x = jnp.zeros((1, f, f, module.in_channels))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"]
    return random_params(shapes, seed)


def _copy_fixture(name, dst):
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    return dst


# --- posterior and latent scaling -----------------------------------------------------------


def test_kl_and_mode_match_the_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    logvar = rng.uniform(-3, 2, (3, 2, 4, 5)).astype(np.float32)
    post = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar))
    m, lv = mean.astype(np.float64), logvar.astype(np.float64)
    kl = 0.5 * (m**2 + np.exp(lv) - 1 - lv).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.kl(), kl, rtol=1e-6)
    np.testing.assert_array_equal(post.mode(), mean)
    assert np.all(np.asarray(DiagonalGaussian(post.mean, jnp.zeros_like(post.mean)).kl()) >= 0)


def test_samples_have_the_posterior_mean_and_variance():
    mean = jnp.array([-1.0, 0.5, 2.0])
    logvar = jnp.array([-2.0, 0.0, 1.0])
    post = DiagonalGaussian(jnp.broadcast_to(mean, (20000, 1, 1, 3)),
                            jnp.broadcast_to(logvar, (20000, 1, 1, 3)))  # fmt: skip
    z = np.asarray(post.sample(jax.random.key(0))).reshape(-1, 3)
    std = np.exp(0.5 * np.asarray(logvar))
    se = std / np.sqrt(len(z))
    assert np.all(np.abs(z.mean(0) - np.asarray(mean)) < 5 * se)
    np.testing.assert_allclose(z.std(0), std, rtol=0.03)
    other = np.asarray(post.sample(jax.random.key(1))).reshape(-1, 3)
    assert not np.allclose(z, other)


@pytest.mark.parametrize(
    "fields, mean, std",
    [
        (dict(scaling_factor=0.18215), 0.0, 1.0),
        (dict(scaling_factor=1.5305, shift_factor=0.0609), 0.0609, 1.0),
        (dict(scaling_factor=0.5, latents_mean=(0.1, -0.2), latents_std=(1.5, 0.5)),
         np.array([0.1, -0.2]), np.array([1.5, 0.5])),
    ],
)  # fmt: skip
def test_latent_scaling_is_the_documented_affine_map(fields, mean, std):
    module = AutoencoderKL(**SMALL, **fields)
    z = np.random.default_rng(1).standard_normal((2, 3, 3, 2)).astype(np.float32)
    expected = (z - mean) * fields["scaling_factor"] / std
    np.testing.assert_allclose(module.to_latents(jnp.asarray(z)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(module.from_latents(jnp.asarray(expected)), z, rtol=1e-5, atol=1e-6)


def test_image_latent_helpers_compose_encode_scaling_and_decode():
    module = AutoencoderKL(**SMALL, shift_factor=0.3, scaling_factor=0.7)
    params = {"params": _params(module)}
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 4, 6, 3)), jnp.float32)
    key = jax.random.key(3)

    def run(p, x):
        post = module.apply(p, x, method="encode")
        mean, logvar = post  # encode unpacks as (mean, logvar)
        latents = module.apply(p, x, method="encode_latents")
        sampled = module.apply(p, x, key, method="encode_latents")
        return (mean, logvar, latents, sampled, post.sample(key),
                module.apply(p, latents, method="decode_latents"),
                module.apply(p, mean, method="decode"), module.apply(p, x, key))  # fmt: skip

    mean, logvar, latents, sampled, z, images, decoded, (recon, post) = jax.jit(
        run, compiler_options=FAST_COMPILE
    )(params, x)
    assert mean.shape == logvar.shape == (2, 2, 3, 2)
    np.testing.assert_allclose(latents, (mean - 0.3) * 0.7, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sampled, (z - 0.3) * 0.7, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(images, decoded, rtol=1e-5, atol=1e-5)
    assert images.shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(post.mean, mean)
    assert recon.shape == x.shape and not np.allclose(recon, decoded)


def test_remat_gives_the_same_gradients():
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, 4, 4, 3)), jnp.float32)
    grads = []
    for remat in (False, True):
        module = AutoencoderKL(**{**SMALL, "channels": (4,)}, remat=remat)
        params = _params(module)

        def loss(p, module=module):
            recon, post = module.apply({"params": p}, x)
            return jnp.mean((recon - x) ** 2) + 1e-3 * post.kl().mean()

        grads.append(jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params))
    scale = max(np.abs(g).max() for g in jax.tree.leaves(grads[0]))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


# --- export / import ------------------------------------------------------------------------

ROUND_TRIP = {
    "sd-like": dict(SMALL),
    "sd3-like": dict(SMALL, latent_channels=16, use_quant_conv=False,
                     use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305),
    "deep": dict(channels=(4, 4, 8), norm_groups=4, layers_per_block=3, mid_attention=False,
                 in_channels=1, out_channels=2, latent_channels=2, latents_mean=(0.5, -1.0),
                 latents_std=(2.0, 0.25)),
    "mixed-quant": dict(SMALL, use_quant_conv=True, use_post_quant_conv=False),
}  # fmt: skip
FIELDS = ("in_channels", "out_channels", "latent_channels", "channels", "layers_per_block",
          "norm_groups", "mid_attention", "use_quant_conv", "use_post_quant_conv",
          "scaling_factor", "shift_factor", "latents_mean", "latents_std")  # fmt: skip


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_export_import_round_trip_is_exact(tmp_path, name):
    module = AutoencoderKL(**ROUND_TRIP[name])
    params = _params(module, seed=5)
    export_diffusers_vae(module, params, tmp_path)
    loaded, back = load_diffusers_vae(tmp_path)
    flat_a = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_b = jax.tree_util.tree_flatten_with_path(back)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    for field in FIELDS:
        assert getattr(loaded, field) == getattr(module, field), field


def test_export_refuses_parameters_of_another_model(tmp_path):
    params = _params(AutoencoderKL(**SMALL))
    with pytest.raises(ValueError, match=r"missing parameters \['post_quant_conv.bias'"):
        del params["post_quant_conv"]
        export_diffusers_vae(AutoencoderKL(**SMALL), params, tmp_path)


# --- bad inputs -----------------------------------------------------------------------------


def test_image_size_not_a_multiple_of_the_factor_is_refused():
    module = AutoencoderKL(channels=(4, 4, 8), norm_groups=2)
    with pytest.raises(ValueError, match=r"image size 10x8 is not a multiple of the downsampling "
                                         r"factor 4"):  # fmt: skip
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 10, 8, 3))))


def test_wrong_channel_counts_are_refused():
    module = AutoencoderKL(**SMALL)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\] \(in_channels=3\), got shape "
                                         r"\(1, 4, 4, 4\)"):  # fmt: skip
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 4))))
    params = _params(module)
    with pytest.raises(ValueError, match=r"\[B, h, w, 2\] \(latent_channels=2\), got shape "
                                         r"\(1, 2, 2, 4\)"):  # fmt: skip
        module.apply({"params": params}, jnp.zeros((1, 2, 2, 4)), method="decode")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(channels=(4, 5)), r"level 1 has 5 channels, not divisible by norm_groups=2"),
        (dict(shift_factor=0.1, latents_mean=(0.0, 0.0)), r"shift_factor or latents_mean"),
        (dict(latents_std=(1.0,)), r"latents_std has 1 entries for latent_channels=2"),
        (dict(latents_std=(1.0, 0.0)), r"latents_std must be positive"),
        (dict(scaling_factor=0.0), r"scaling_factor must be non-zero"),
        (dict(attention_impl="cuda"), r"'cuda' is not one of"),
    ],
)  # fmt: skip
def test_inconsistent_module_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**{**SMALL, **fields})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("act_fn", "gelu", r"act_fn='gelu' is not supported \(supported: \['silu', 'swish'\]\)"),
        ("norm_type", "spatial", r"'norm_type' is not a AutoencoderKL field jaxdiff understands"),
        ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
         r"down_block_types \['AttnDownEncoderBlock2D'\] are not supported \(supported: "
         r"\['DownEncoderBlock2D'\]\)"),
        ("up_block_types", ["UpDecoderBlock2D"], r"up_block_types has 1 entries for 2"),
        ("layers_per_block", [1, 2], r"layers_per_block=\[1, 2\] is not supported"),
        ("latents_mean", [0.0], r"latents_mean has 1 entries for latent_channels=3"),
        ("_class_name", "AutoencoderTiny", r"_class_name 'AutoencoderTiny' is not one of"),
    ],
)  # fmt: skip
def test_unsupported_config_fields_are_named(tmp_path, field, value, message):
    path = _copy_fixture("deep", tmp_path / "vae")
    with open(path / CONFIG_NAME) as f:
        config = json.load(f)
    config[field] = value
    with open(path / CONFIG_NAME, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=message):
        load_diffusers_vae(path)


def test_missing_and_misshapen_weights_are_named(tmp_path):
    path = _copy_fixture("sd3_like", tmp_path / "vae")
    state = load_file(path / SAFETENSORS_NAME)
    del state["decoder.conv_out.bias"]
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:, :2]
    state["quant_conv.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    save_file(state, str(path / SAFETENSORS_NAME))
    with pytest.raises(ValueError) as info:
        load_diffusers_vae(path)
    message = str(info.value)
    assert "missing parameters ['decoder.conv_out.bias']" in message
    assert "unexpected parameters ['quant_conv.weight']" in message  # use_quant_conv=False
    assert "encoder.conv_in.weight has shape (8, 2, 3, 3), the model needs (8, 3, 3, 3)" in message


def test_flax_loader_refuses_torch_checkpoints_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusion_flax_model.msgpack"):
        load_flax_diffusers_vae(os.path.join(FIXTURES, "deep"))
    path = _copy_fixture("flax_vae", tmp_path / "vae")
    with open(path / CONFIG_NAME) as f:
        config = json.load(f)
    with open(path / CONFIG_NAME, "w") as f:
        json.dump({**config, "_class_name": "AutoencoderKL"}, f)
    with pytest.raises(ValueError, match="is not 'FlaxAutoencoderKL'"):
        load_flax_diffusers_vae(path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_diffusers_vae(path)
