"""Shared pieces of the pipeline tests: the fixture cases (tests/fixtures/pipelines) and one
cache of loaded pipelines for the whole session (loading builds every model's parameter
shapes, about a second per directory)."""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from jaxdiff import pipelines

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pipelines")
with open(os.path.join(FIXTURES, "cases.json")) as f:
    CASES = json.load(f)
DATA = np.load(os.path.join(FIXTURES, "cases.npz"))
_INPUTS = {"image": "image", "mask": "mask_image", "image_noise": "image_noise",
           "masked_image_noise": "masked_image_noise"}  # fmt: skip


@functools.cache
def load(name: str, devices: int = 1) -> pipelines.DiffusionPipeline:
    """The fixture directory ``name`` as its pipeline class, on the first ``devices`` devices
    (further device counts re-place the same models: no second load)."""
    if devices != 1:
        base = load(name)
        return type(base)(base.models, devices=jax.devices()[:devices])
    path = os.path.join(FIXTURES, name)
    return pipelines.load_pipeline(path, devices=jax.devices()[:1])


def case_pipeline(case: str, devices: int = 1) -> pipelines.DiffusionPipeline:
    """The pipeline of a case: its class on the shared models, with the case's scheduler."""
    spec = CASES[case]
    pipe = pipelines.PIPELINES[spec["class"]].from_pipe(load(spec["pipeline"], devices))
    pipe.set_scheduler(pipelines.sampler_from_config(spec["scheduler"]))
    return pipe


def case_call(case: str) -> tuple[list[str], dict]:
    """(prompt, keyword arguments) of a case, with the noise diffusers drew."""
    kw = dict(CASES[case]["kwargs"])
    prompt = kw.pop("prompt")
    for key in ("crops_coords_top_left", "original_size"):
        if key in kw:
            kw[key] = tuple(kw[key])
    if "Inpaint" in CASES[case]["class"]:  # the output size is the image's
        kw.pop("height"), kw.pop("width")
    for name, arg in _INPUTS.items():
        if f"{case}/{name}" in DATA.files:
            kw[arg] = DATA[f"{case}/{name}"]
    return prompt, {**kw, "latents": DATA[f"{case}/latents"]}
