"""Stable Diffusion pipelines against diffusers' PyTorch pipelines (fixtures:
tests/fixtures/pipelines/generate.py and check_export.py).

Each case runs a tiny random diffusers-format pipeline with the noise diffusers drew (recorded
by the generator) and compares the final ``output_type="np"`` images: tolerance 1e-3 (float32
on both sides; measured <= 2e-6). Also: changing prompts, negative prompts, guidance scale or
seeds does not recompile; 8 devices give the images of one device; an image does not depend
on the batch it is drawn in; ``save_pretrained`` round-trips, and diffusers loads the saved
directory with the same images.
"""

import json
import os

import jax
import numpy as np
import pytest
from pipeline_helpers import CASES, DATA, FIXTURES, case_call, case_pipeline, load

from jaxdiff import pipelines
from jaxdiff.pipelines import program

TOLERANCE = 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(case):
    pipe = case_pipeline(case)
    prompt, kw = case_call(case)
    images = pipe(prompt, **kw)
    ref = DATA[f"{case}/images"]
    assert images.shape == ref.shape and images.dtype == np.float32
    err = np.abs(images - ref).max()
    assert err <= TOLERANCE, f"{case}: max |jaxdiff - diffusers| = {err:.2e}"


def test_sdxl_unet_needs_its_added_conditioning():
    """(Its numbers are checked through the SDXL cases above.)"""
    sdxl = load("sdxl").models
    x, t, context = np.zeros((1, 4, 4, 4)), np.zeros(1), np.zeros((1, 3, 32))
    with pytest.raises(ValueError, match="needs text_embeds and time_ids"):
        sdxl.unet.apply({"params": sdxl.unet_params}, x, t, context=context)
    with pytest.raises(ValueError, match="with P . M x 4 = addition_embed_dim 32"):
        sdxl.unet.apply({"params": sdxl.unet_params}, x, t, context=context,
                        text_embeds=np.zeros((1, 8)), time_ids=np.zeros((1, 5)))  # fmt: skip


def test_changing_prompts_scale_and_seed_does_not_recompile():
    pipe = case_pipeline("sd_ddim")
    kw = dict(num_inference_steps=4, height=32, width=32)
    first = pipe("a photo of a cat", guidance_scale=5.0, seed=0, **kw)
    size = program.generate._cache_size()
    calls = [
        pipe("a red car on a road", guidance_scale=5.0, seed=0, **kw),
        pipe("a red car on a road", "blurry", guidance_scale=5.0, seed=0, **kw),
        pipe("a red car on a road", "blurry", guidance_scale=9.0, seed=0, **kw),
        pipe("a red car on a road", "blurry", guidance_scale=9.0, seed=5, **kw),
    ]
    assert program.generate._cache_size() == size
    outputs = [first, *calls]
    for a, b in zip(outputs, outputs[1:], strict=False):  # each change reached the result
        assert np.abs(a - b).max() > 1e-3
    # The same seed and inputs give the same image.
    again = pipe("a red car on a road", "blurry", guidance_scale=9.0, seed=5, **kw)
    np.testing.assert_array_equal(again, calls[-1])
    # Scales <= 1 turn guidance off, as in diffusers: the negative prompt has no effect.
    off = [pipe("a red car on a road", neg, guidance_scale=w, seed=5, **kw)
           for neg, w in (("blurry", 1.0), ("a dog", 1.0), ("a dog", 0.5))]  # fmt: skip
    np.testing.assert_allclose(off[1], off[0], atol=1e-5)
    np.testing.assert_allclose(off[2], off[0], atol=1e-5)
    (pil,) = pipe("a red car on a road", seed=5, output_type="pil", **kw)
    assert pil.size == (32, 32)
    assert program.generate._cache_size() == size


def test_eight_devices_give_one_devices_images():
    """Sharded over 8 devices (2 images padded to 8) = one device; image i of seed s depends
    only on (s, i) and its prompt, not on the batch; a seed list gives image i (s_i, 0)."""
    prompts = ["a photo of a cat", "a red car on a road"]
    kw = dict(num_inference_steps=6, height=48, width=32, guidance_scale=6.0)  # as sd_dpm
    one = case_pipeline("sd_dpm", devices=1)
    eight = case_pipeline("sd_dpm", devices=8)
    kernel = eight.params["unet"]["conv_in"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.is_fully_replicated
    a, b = one(prompts, seed=11, **kw), eight(prompts, seed=11, **kw)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(eight(prompts[:1], seed=11, **kw)[0], a[0], atol=1e-5, rtol=0)
    listed = eight(prompts[::-1], seed=[12, 11], **kw)  # (car, (12, 0)), (cat, (11, 0))
    np.testing.assert_allclose(listed[1], a[0], atol=1e-5, rtol=0)
    assert np.abs(listed[0] - b[1]).max() > 1e-3  # (12, 0) is not (11, 1)


def test_pipelines_share_weights_without_copies():
    base = load("sd")
    img2img = pipelines.StableDiffusionImg2ImgPipeline.from_pipe(base)
    inpaint = pipelines.StableDiffusionInpaintPipeline.from_pipe(base)
    for pipe in (img2img, inpaint):
        assert pipe.params is base.params and pipe.models.unet_params is base.models.unet_params
    img2img.set_sampler("ddim", eta=0.0)  # changes that pipeline only
    assert img2img.scheduler.name == "ddim" and base.scheduler.name == "pndm"
    assert img2img.params is base.params


def test_save_pretrained_round_trip(tmp_path):
    case = "sdxl"
    pipe = case_pipeline(case)
    pipe.save_pretrained(tmp_path)
    index = json.load(open(tmp_path / "model_index.json"))
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    again = pipelines.load_pipeline(tmp_path, devices=jax.devices()[:1])
    assert again.scheduler == pipe.scheduler
    prompt, kw = case_call(case)
    np.testing.assert_array_equal(again(prompt, **kw), pipe(prompt, **kw))


@pytest.mark.parametrize("case", ["sd_v", "sdxl", "inpaint", "sd_dpm_named"])
def test_saved_directories_load_in_diffusers(case):
    """check_export.py loaded jaxdiff's save_pretrained output with diffusers 0.39 and ran it
    with the case's noise; jaxdiff's images of the original directory must match those."""
    exported = np.load(os.path.join(FIXTURES, "export.npz"))
    base = case.removesuffix("_named")
    pipe = case_pipeline(base)
    if case.endswith("_named"):  # a sampler chosen by jaxdiff name, written as its class
        pipe.set_sampler("dpm_solver", **dict(pipe.scheduler.options))
    prompt, kw = case_call(base)
    err = np.abs(pipe(prompt, **kw) - exported[case]).max()
    assert err <= TOLERANCE, f"{case}: max |jaxdiff - diffusers(saved)| = {err:.2e}"
