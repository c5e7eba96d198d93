"""Pipeline inputs: scheduler configs -> samplers, bad directories and arguments (refused
before anything compiles, naming what is wrong), bfloat16 models, the CLI."""

import json
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import CASES, DATA, FIXTURES, load

from jaxdiff import pipelines
from jaxdiff.pipelines import cli, program


@pytest.fixture(scope="module")
def sd():
    return load("sd")


def _copy(tmp_path, name="sd"):
    path = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), path)
    return path


def _edit_json(file, **changes):
    data = json.load(open(file))
    data.update(changes)
    json.dump(data, open(file, "w"))


# ---------------------------------------------------------------------------------------
# Scheduler configs.


def test_published_configs_map_to_samplers_dropping_ignored_fields():
    sd = pipelines.load_scheduler(os.path.join(FIXTURES, "sd", "scheduler"))
    assert sd.name == "pndm" and sd.diffusers_class == "PNDMScheduler"
    assert dict(sd.options) == {"skip_prk_steps": True, "set_alpha_to_one": False,
                                "timestep_spacing": "leading", "steps_offset": 1}  # fmt: skip
    assert dict(sd.schedule_args)["beta_schedule"] == "scaled_linear"  # clip_sample dropped
    xl = pipelines.load_scheduler(os.path.join(FIXTURES, "sdxl", "scheduler"))
    assert xl.name == "euler" and "skip_prk_steps" not in dict(xl.options)
    v = pipelines.sampler_from_config(CASES["sd_v"]["scheduler"])
    assert (v.name, v.prediction_type) == ("ddim", "v_prediction")


@pytest.mark.parametrize("case", ["sd_ddim", "sd_dpm", "sd_euler", "sdxl"])
def test_scheduler_config_round_trip(case):
    choice = pipelines.sampler_from_config(CASES[case]["scheduler"])
    config = choice.to_config()
    assert config["_class_name"] == CASES[case]["scheduler"]["_class_name"]
    assert pipelines.sampler_from_config(config) == choice


def test_model_index_class_wins_and_unknown_schedulers_are_listed():
    config = dict(CASES["sd_ddim"]["scheduler"])
    assert pipelines.sampler_from_config(config, "DDIMScheduler").name == "ddim"
    with pytest.raises(ValueError, match="'KarrasVeScheduler' is not supported; supported: "
                       "DDIMScheduler, DDPMScheduler, DEISMultistepScheduler"):  # fmt: skip
        pipelines.sampler_from_config(config, "KarrasVeScheduler")


def test_unsupported_scheduler_settings_are_named():
    config = dict(CASES["sd_dpm"]["scheduler"], use_exponential_sigmas=True, flow_shift=2.0)
    with pytest.raises(ValueError, match="use_exponential_sigmas=True.*flow_shift=2.0"):
        pipelines.sampler_from_config(config)
    default = dict(CASES["sd_dpm"]["scheduler"], use_exponential_sigmas=False)
    assert pipelines.sampler_from_config(default).name == "dpm_solver"
    assert dict(pipelines.sampler_from_config(default).options)["lambda_min_clipped"] == -math.inf


def test_sd_pipelines_fix_legacy_scheduler_settings_as_diffusers(sd, caplog):
    config = dict(CASES["sd_ddim"]["scheduler"], steps_offset=0, clip_sample=True)
    models = sd.models.replace(scheduler=pipelines.sampler_from_config(config))
    with caplog.at_level(logging.WARNING, logger="jaxdiff.pipelines"):
        pipe = pipelines.StableDiffusionPipeline(models, devices=jax.devices()[:1])
    options = dict(pipe.scheduler.options)
    assert (options["steps_offset"], options["clip_sample"]) == (1, False)
    assert "steps_offset" in caplog.text


def test_set_sampler_validates_eagerly(sd):
    pipe = pipelines.StableDiffusionPipeline.from_pipe(sd)
    with pytest.raises(ValueError, match="Unknown sampler 'nope'"):
        pipe.set_sampler("nope")
    with pytest.raises(ValueError, match="Unknown option 'etaa'"):
        pipe.set_sampler("ddim", etaa=0.5)
    pipe.set_sampler("unipc", solver_order=3)
    assert pipe.scheduler.to_config()["_class_name"] == "UniPCMultistepScheduler"
    pipe.set_sampler("ddim", eta=0.5)  # eta is per call in diffusers: not written
    assert "eta" not in pipe.scheduler.to_config()
    pipe.set_sampler("ddim", timesteps=[999, 500, 1])
    with pytest.raises(ValueError, match=r"options \['timesteps'\] of sampler 'ddim' are not"):
        pipe.scheduler.to_config()


# ---------------------------------------------------------------------------------------
# Bad directories.


def test_missing_component_is_named(tmp_path):
    path = _copy(tmp_path)
    shutil.rmtree(path / "vae")
    with pytest.raises(FileNotFoundError, match="missing component directory 'vae'"):
        pipelines.load_pipeline(path)
    index = json.load(open(path / "model_index.json"))
    del index["vae"]
    json.dump(index, open(path / "model_index.json", "w"))
    with pytest.raises(ValueError, match=r"has no component \['vae'\]"):
        pipelines.load_pipeline(path)
    os.remove(path / "model_index.json")
    with pytest.raises(FileNotFoundError, match="model_index.json: no such file"):
        pipelines.load_pipeline(path)


def test_unsupported_directory_contents_are_named(tmp_path):
    path = _copy(tmp_path)
    _edit_json(path / "model_index.json", scheduler=["diffusers", "KarrasVeScheduler"])
    with pytest.raises(ValueError, match="KarrasVeScheduler' is not supported; supported:"):
        pipelines.load_pipeline(path)
    _edit_json(path / "model_index.json", _class_name="StableDiffusionUpscalePipeline")
    with pytest.raises(ValueError, match="StableDiffusionUpscalePipeline' is not supported"):
        pipelines.load_pipeline(path)
    _edit_json(path / "model_index.json", _class_name="StableDiffusionPipeline",
               scheduler=["diffusers", "PNDMScheduler"], controlnet=["diffusers", "X"])  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown entries \['controlnet'\]"):
        pipelines.load_pipeline(path)


def test_nine_channel_unet_needs_the_inpainting_pipeline(sd):
    params = dict(sd.models.unet_params, conv_in={"kernel": np.zeros((3, 3, 9, 8)), "bias": 0})
    nine = sd.models.replace(unet_params=params)
    with pytest.raises(ValueError, match="takes 9 .an inpainting U-Net"):
        pipelines.StableDiffusionPipeline(nine, devices=jax.devices()[:1])
    assert pipelines.StableDiffusionInpaintPipeline.unet_channels == (4, 9)


# ---------------------------------------------------------------------------------------
# Bad arguments (refused before compiling: the cache does not grow).


def test_bad_arguments_are_refused_before_compiling(sd):
    size = program.generate._cache_size()
    with pytest.raises(ValueError, match="multiples of 8; got 36 and 32"):
        sd("a cat", height=36, width=32)
    with pytest.raises(ValueError, match=r"multiples of 16 \(the VAE's 8 x the U-Net's 2\)"):
        load("sdxl")("a cat", height=40, width=32)  # (the SD fixtures' U-Net has one level)
    img2img = pipelines.StableDiffusionImg2ImgPipeline.from_pipe(sd)
    image = DATA["img2img/image"]
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            img2img("a cat", image, strength=strength, num_inference_steps=5)
    with pytest.raises(ValueError, match="multiples of 8; got 44 and 32"):
        img2img("a cat", image[:, :44])
    inpaint = pipelines.StableDiffusionInpaintPipeline.from_pipe(sd)
    with pytest.raises(ValueError, match="'pndm' sampler .6 model calls for 5 steps. and an "
                       "ordinary .4-channel. U-Net"):  # fmt: skip
        inpaint("a cat", image[:1], DATA["inpaint/mask"][:1], num_inference_steps=5)
    inpaint.set_sampler("ddim")
    with pytest.raises(ValueError, match="mask_image is 40x32 but image is 48x32"):
        inpaint("a cat", image[:1], DATA["inpaint/mask"][:1, :40], num_inference_steps=5)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries for 2 prompt"):
        sd(["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 4, 4\)"):
        sd("a cat", latents=np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="output_type 'pt' is not one of"):
        sd("a cat", output_type="pt", latents=np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="seed: got 3 seeds for 2 images"):
        sd(["a", "b"], seed=[1, 2, 3])
    with pytest.raises(ValueError, match="values must lie in"):
        img2img("a cat", image * 2)
    assert program.generate._cache_size() == size


def test_sdxl_time_ids_must_fit_the_unet():
    base = load("sdxl")
    refiner_like = base.models.replace(settings={**base.models.settings,
                                                 "requires_aesthetics_score": True})  # fmt: skip
    pipe = pipelines.StableDiffusionXLImg2ImgPipeline(refiner_like, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="width 32 but 5 time ids x 4 . projection_dim 8 = 28"):
        pipe("a cat", DATA["sdxl_img2img/image"][:1], num_inference_steps=5)


def test_long_prompts_are_truncated_with_a_warning(sd, caplog):
    pipe = pipelines.StableDiffusionPipeline.from_pipe(sd)
    pipe.set_scheduler(pipelines.sampler_from_config(CASES["sd_ddim"]["scheduler"]))
    long = " ".join(["a small red house by a river"] * 20)
    kw = dict(num_inference_steps=4, guidance_scale=5.0, latents=DATA["sd_ddim/latents"])
    with caplog.at_level(logging.WARNING, logger="jaxdiff.text"):
        images = pipe(long, **kw)
    assert "can only handle sequences up to 77 tokens" in caplog.text
    ids = pipe.models.tokenizers[0](long)
    full = pipe.models.tokenizers[0].backend(long)["input_ids"]
    assert len(full) > 77 and ids.shape == (1, 77) and ids[0, -1] == full[-1]
    np.testing.assert_array_equal(ids[0, :76], full[:76])
    assert np.isfinite(images).all()


def test_image_and_mask_inputs():
    from PIL import Image

    from jaxdiff.pipelines import images

    rgb = np.random.default_rng(0).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(images.load_images(Image.fromarray(rgb)), rgb[None] / 255.0, 1e-6)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    from_rgb = images.load_images(rgb, channels=1)  # an RGB mask array: PIL's luma
    np.testing.assert_allclose(from_rgb, gray[None, ..., None] / 255.0, atol=1 / 255 + 1e-6)
    assert images.load_images([gray, gray], channels=1).shape == (2, 16, 8, 1)
    with pytest.raises(ValueError, match="images of different sizes"):
        images.load_images([rgb, rgb[:8]])
    with pytest.raises(ValueError, match="got 3 entries for 2 prompt"):
        images.per_image(np.zeros((3, 8, 8, 3)), 2, 2, "image")


# ---------------------------------------------------------------------------------------
# bfloat16 and the CLI.


def test_bfloat16_models_with_float32_sampler_maths():
    path = os.path.join(FIXTURES, "sd")
    pipe = pipelines.load_pipeline(path, dtype=jnp.bfloat16, devices=jax.devices()[:1])
    pipe.set_scheduler(pipelines.sampler_from_config(CASES["sd_ddim"]["scheduler"]))
    assert pipe.params["unet"]["conv_in"]["kernel"].dtype == jnp.bfloat16
    prompt, kw = CASES["sd_ddim"]["kwargs"]["prompt"], dict(CASES["sd_ddim"]["kwargs"])
    kw.pop("prompt")
    images = pipe(prompt, **kw, latents=DATA["sd_ddim/latents"])
    assert images.dtype == np.float32
    err = np.abs(images - DATA["sd_ddim/images"]).max()
    assert 1e-4 < err < 0.05, f"bf16 vs diffusers float32: {err:.3g}"


def test_cli_writes_images_and_npz(tmp_path):
    out = tmp_path / "out"
    images = cli.generate_images(
        os.path.join(FIXTURES, "sd"), ["a photo of a cat", "a red car"], out=str(out),
        num_steps=5, height=48, width=32, negative_prompt="blurry", seed=3, progress=False,
        devices=jax.devices()[:1],  # the program of the sd_pndm parity case
    )  # fmt: skip
    saved = np.load(out / "images.npz")
    np.testing.assert_array_equal(saved["images"], images)
    assert list(saved["prompts"]) == ["a photo of a cat", "a red car"]
    assert sorted(os.listdir(out)) == ["image_0.png", "image_1.png", "images.npz"]
    with pytest.raises(ValueError, match="--mask needs --image"):
        cli.generate_images(os.path.join(FIXTURES, "sd"), ["x"], out=str(out), mask="m.png")
