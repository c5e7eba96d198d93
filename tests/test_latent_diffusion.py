"""Latent diffusion and autoencoder runs: the latent step against closed forms (encoded in the
step or cached: the same latents), the scaling-factor estimate, config relations and bad setups,
an in-process latent run on a diffusers VAE directory, and the command-line recipe (VAE run with
discriminator and perceptual term -> cached latent run -> sample.py)."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import data as data_lib
from jaxdiff import models
from jaxdiff.experiment import (
    Generator,
    from_config,
    load_workdir,
    train_and_evaluate,
    validate_config,
)
from jaxdiff.experiment import autoencoder as ae_lib
from jaxdiff.experiment import latent as latent_lib
from jaxdiff.experiment.autoencoder_run import load_autoencoder_workdir
from jaxdiff.models import AutoencoderKL, export_diffusers_vae
from jaxdiff.schedules import make_schedule
from jaxdiff.training.latent import (
    LatentTrainState,
    posterior_keys,
    with_vae_params,
)
from jaxdiff.training.state import TrainState

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "fixtures", "unet"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))
import digits_latent  # noqa: E402
import digits_vae  # noqa: E402
from random_weights import random_params  # noqa: E402
from test_end_to_end import ENV, run  # noqa: E402

TINY_VAE = dict(
    in_channels=1, out_channels=1, latent_channels=2, channels=(4, 4), norm_groups=2,
    mid_attention=False,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def _export_vae(path, **fields):
    vae = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.5, **fields})
    x = jnp.zeros((1, 8, 8, vae.in_channels))
    shapes = jax.eval_shape(vae.init, jax.random.key(0), x)["params"]
    params = random_params(shapes, 0)
    export_diffusers_vae(vae, params, path)
    return vae, params


# --- the latent step -------------------------------------------------------------------------


def test_latent_space_of_a_diffusers_vae_encoded_in_the_step_or_cached(tmp_path):
    """open_latent_space on a diffusers vae/ directory: the split's moments are cached (and
    reused), the scaling factor estimated and recorded; the wrapped step sees
    (z - shift) * scale of z = mean + exp(logvar / 2) eps with eps from each example's key,
    the same latents whether the encoder runs in the step or the moments were cached."""
    vae, params = _export_vae(tmp_path / "vae", shift_factor=0.1)
    config = _latent_config(tmp_path / "vae", latent__cache=True)
    config.latent.estimate_scaling_factor = True
    dataset = from_config.open_dataset(config.data)
    space = latent_lib.open_latent_space(config, dataset, str(tmp_path / "run"))
    assert space.shape == (4, 4, 2) and space.moments.shape == (1500, 4, 4, 4)
    key = jax.random.fold_in(jax.random.key(config.seed), latent_lib.ESTIMATE_SALT)
    scale = latent_lib.estimate_scaling_factor(vae, space.moments[:16], key)
    assert space.vae.scaling_factor == scale and space.estimated_from == 16
    resolved = space.resolved_config(config).latent
    assert (resolved.scaling_factor, resolved.estimate_scaling_factor) == (scale, False)
    info = space.run_info()["latent"]
    assert info["autoencoder"]["scaling_factor"] == scale and info["vae_step"] is None
    config.latent.estimate_scaling_factor, config.latent.scaling_factor = False, 0.3
    again = latent_lib.open_latent_space(config, dataset, str(tmp_path / "run"))
    assert isinstance(again.moments, np.memmap)  # read back, not re-encoded
    np.testing.assert_array_equal(again.moments, space.moments)
    assert again.vae.scaling_factor == 0.3 and again.estimated_from is None

    def inner(state, batch, key):
        return state, {"latents": batch["image"], "label": batch["label"]}

    images = next(
        data_lib.make_pipeline(
            dataset.builder, global_batch_size=4, image_size=8, shuffle=False, with_index=True
        )
    )
    state = with_vae_params(TrainState(jnp.int32(3), {}, {}, ()), params)
    batch, key = {"image": images["image"], "label": images["label"]}, jax.random.key(9)
    in_step = dataclasses.replace(space, moments=None).wrap_train_step(inner)
    new, encoded = jax.jit(in_step)(state, batch, key)
    cached_batch = {"moments": space.moments[images["index"]], "label": images["label"]}
    _, cached = jax.jit(space.wrap_train_step(inner))(state, cached_batch, key)
    mean, logvar = np.split(cached_batch["moments"], 2, axis=-1)
    eps = jax.vmap(lambda k: jax.random.normal(k, (4, 4, 2)))(posterior_keys(key, 3, 4))
    want = (mean + np.exp(0.5 * logvar) * np.asarray(eps) - 0.1) * scale
    np.testing.assert_allclose(cached["latents"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded["latents"], cached["latents"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(encoded["label"], images["label"])
    assert isinstance(new, LatentTrainState)
    with pytest.raises(ValueError, match="holds no 'moments' and no encode_fn"):
        space.wrap_train_step(inner)(state, batch, key)


def test_scaling_factor_estimate_is_one_over_the_latent_std():
    rng = np.random.default_rng(1)
    mean = rng.normal(0.3, 2.0, (6, 2, 2, 2)).astype(np.float32)
    logvar = rng.uniform(-3, 0, mean.shape).astype(np.float32)
    key = jax.random.key(4)
    eps = np.asarray(jax.random.normal(key, mean.shape, np.float32))
    z = mean.astype(np.float64) + np.exp(0.5 * logvar) * eps
    for shift in (None, 0.25):
        vae = AutoencoderKL(**TINY_VAE, shift_factor=shift)
        got = latent_lib.estimate_scaling_factor(vae, np.concatenate([mean, logvar], -1), key)
        np.testing.assert_allclose(got, 1.0 / (z - (shift or 0.0)).std(), rtol=1e-5)


def test_psnr_is_that_of_images_in_0_1():
    x = np.zeros((2, 4, 4, 1))
    y = x + np.array([0.2, 0.02])[:, None, None, None]  # [-1, 1]: errors 0.1, 0.01 in [0, 1]
    np.testing.assert_allclose(ae_lib.psnr(x, y), [20.0, 40.0])
    np.testing.assert_allclose(ae_lib.psnr(x, x + 3.0), [10 * np.log10(4.0)] * 2)  # clipped


# --- configs and bad setups ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"latent.cache": True}, "config.latent.cache needs config.latent.vae"),
        ({"task": "autoencoder", "latent.vae": "w"}, "config.latent.vae='w' is for diffusion"),
        ({"latent.vae": "w", "latent.cache": True, "data.random_flip": True}, "random_flip=False"),
        (
            {
                "latent.vae": "w",
                "latent.scaling_factor": 0.2,
                "latent.estimate_scaling_factor": True,
            },
            "give one of them",
        ),
        (
            {"autoencoder.disc_start": 0, "optim.grad_accum_steps": 2},
            "disc_start needs config.optim.grad_accum_steps=1",
        ),
        ({"autoencoder.reconstruction": "l3"}, "config.autoencoder.reconstruction='l3'"),
        ({"task": "vae"}, "config.task='vae' is invalid; allowed: one of ('diffusion'"),
    ],
)
def test_autoencoder_and_latent_config_relations(change, message):
    config = digits_vae.get_config("smoke")
    config.task = "diffusion"
    for name, value in change.items():
        *sections, field = name.split(".")
        section = config
        for s in sections:
            section = section[s]
        section[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        validate_config(config)


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("autoencoder", {"kwargs": {"channelz": (4,)}}, r"field\(s\) \['channelz'\]"),
        ("autoencoder", {"kwargs": {"in_channels": 3}}, "in_channels=3 but the images have 1"),
        ("data", {"image_size": 10}, "Images of 10x10 pixels do not fit the autoencoder"),
        ("autoencoder", {"perceptual_fn": "vae_features"}, "must look like 'package.module:"),
        ("autoencoder", {"perceptual_fn": "vae_features:nope"}, "cannot be imported"),
        ("autoencoder", {"perceptual_fn": "vae_features:NOT_CALLABLE"}, "is not callable"),
    ],
)
def test_bad_autoencoder_setups_are_named_before_compiling(tmp_path, section, change, message):
    config = digits_vae.get_config("smoke")
    config[section].update(change)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "w")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def _latent_config(vae_dir, **changes):
    c = digits_latent.get_config("smoke")
    c.latent.vae = str(vae_dir)
    c.latent.cache = False
    c.data.image_size = 8
    c.train.num_steps = 2
    c.sample.num_samples = 2
    for name, value in changes.items():
        section, field = name.split("__")
        c[section][field] = value
    return c


def test_bad_latent_setups_are_named(tmp_path):
    _export_vae(tmp_path / "vae")
    (tmp_path / "rgb").mkdir()
    _export_vae(tmp_path / "rgb" / "vae", in_channels=3, out_channels=3)  # a pipeline directory
    cases = [
        (dict(model__kwargs={"out_channels": 1}), "the U-Net outputs 1 channels but the VAE"),
        (dict(data__image_size=9), "Images of 9x9 pixels do not fit the autoencoder"),
        (dict(latent__vae_step=3), "vae_step=3 selects a checkpoint of a jaxdiff workdir"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(_latent_config(tmp_path / "vae", **changes), tmp_path / "w")
    with pytest.raises(ValueError, match="takes 3-channel images but the data has 1 channels"):
        train_and_evaluate(_latent_config(tmp_path / "rgb"), tmp_path / "w")
    with pytest.raises(ValueError, match="is not a directory"):
        train_and_evaluate(_latent_config(tmp_path / "missing"), tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a jaxdiff autoencoder workdir"):
        train_and_evaluate(_latent_config(tmp_path / "empty"), tmp_path / "w")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


# --- runs ------------------------------------------------------------------------------------


def test_generator_decodes_the_sampled_latents(tmp_path):
    """A latent Generator returns decoder(latents) of the latents it samples (which DDIM does
    not clip to [-1, 1] unless asked)."""
    vae, params = _export_vae(tmp_path / "vae")
    unet = models.UNet(
        channels=(8,), num_res_blocks=1, attention_levels=(), norm_groups=4, mid_attention=False
    )
    latents_shape = (4, 4, 2)
    x = jnp.zeros((1, *latents_shape))
    shapes = jax.eval_shape(unet.init, jax.random.key(0), x, jnp.zeros((1,)))["params"]
    decoder = ae_lib.LatentDecoder(vae, params)
    gen = Generator(
        unet, random_params(shapes, 1), make_schedule("linear", 1000), objective="diffusion",
        prediction_type="epsilon", sigma_data=0.5, image_shape=latents_shape, decoder=decoder,
    )  # fmt: skip
    kwargs = dict(num_samples=2, sampler="ddim", num_steps=2, seed=1, progress=False)
    images, _ = gen.sample(**kwargs)  # latents are not clipped to [-1, 1] by default
    gen.decoder, gen._compiled = None, {}
    latents, _ = gen.sample(**kwargs, options={"clip_sample": False})
    assert images.shape == (2, 8, 8, 1) and latents.shape == (2, *latents_shape)
    decoded = jax.jit(decoder.decode)(decoder.params, latents)
    np.testing.assert_allclose(images, decoded, rtol=1e-5, atol=1e-5)


def test_vae_then_latent_diffusion_from_the_command_line(tmp_path, monkeypatch):
    """configs/digits_vae.py:smoke with a discriminator and a perceptual term, then
    configs/digits_latent.py:smoke on its cached latents (its sample grid decoded), and the
    Generator that sample.py builds from that workdir."""
    vae_dir, lat_dir = tmp_path / "vae", tmp_path / "latent"
    path = os.pathsep.join([HERE, ENV.get("PYTHONPATH", "")])  # vae_features for perceptual_fn
    monkeypatch.setitem(ENV, "PYTHONPATH", path)
    run(
        [
            "train.py", "--config=configs/digits_vae.py:smoke", f"--workdir={vae_dir}",
            "--config.autoencoder.perceptual_fn=vae_features:pool_features",
            "--config.autoencoder.disc_start=2", "--config.autoencoder.disc_channels=4",
            "--config.autoencoder.disc_layers=1",
        ],
        tmp_path,
    )  # fmt: skip
    grid = Image.open(vae_dir / "samples" / "step_4.png")  # 8 pairs in a row, 2x upscaled
    assert grid.size == (2 * (16 * 33 + 1), 2 * 34)
    assert "disc_params" in (vae_dir / "checkpoints" / "4" / "state" / "_METADATA").read_text()
    module, params, step = load_autoencoder_workdir(str(vae_dir))
    assert step == 4 and module.downsampling_factor == 4
    assert load_autoencoder_workdir(str(vae_dir), step=2)[2] == 2  # config.latent.vae_step
    args = ["train.py", "--config=configs/digits_latent.py:smoke", f"--workdir={lat_dir}"]
    out = run([*args, f"--config.latent.vae={vae_dir}"], tmp_path)
    assert "Done: 4 steps" in out.stdout
    cache = np.load(lat_dir / "latent_cache" / "moments.npy")
    assert cache.shape == (1500, 8, 8, 4)
    info = json.loads((lat_dir / "run_info.json").read_text())["latent"]
    assert info["vae_step"] == 4 and info["scaling_factor_estimated_from"] == 16
    saved_scale = json.loads((lat_dir / "config.json").read_text())["latent"]["scaling_factor"]
    gen = load_workdir(str(lat_dir))  # sample.py's Generator: the VAE from the checkpoint
    for a, b in zip(jax.tree.leaves(gen.decoder.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert gen.image_shape == (8, 8, 2) and gen.decoder.vae.scaling_factor == saved_scale
    assert Image.open(lat_dir / "samples" / "step_4.png").size[0] > 64  # decoded grid
    with pytest.raises(ValueError, match="is an autoencoder run"):
        load_workdir(str(vae_dir))  # what sample.py reports for a VAE workdir
