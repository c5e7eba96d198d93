"""CLIP vision tower and two-tower CLIPModel against transformers 5.24 (float64 references)."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxdiff.models import (
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    load_clip,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation")
TOL = 1e-5  # x std of each output; measured <= 1.2e-6 (transformers' float32 is alike)


def _check(name, got, want):
    err = np.abs(np.asarray(got, np.float64) - want).max() / want.std()
    assert err <= TOL, (name, err)


@pytest.mark.parametrize("case", ["clip_vision", "clip_vision_bare"])
def test_vision_tower_parity(case):
    module, params = load_clip(os.path.join(FIXTURES, case))
    assert type(module) is (
        CLIPVisionModelWithProjection if case == "clip_vision" else CLIPVisionModel
    )
    io = np.load(os.path.join(FIXTURES, case, "io.npz"))
    out = module.apply({"params": params}, io["pixel_values"])
    hidden = [k for k in io.files if k.startswith("hidden_states_")]
    assert len(out.hidden_states) == len(hidden) == 3
    for k in hidden:
        _check(k, out.hidden_states[int(k.rsplit("_", 1)[1])], io[k])
    _check("last_hidden_state", out.last_hidden_state, io["last_hidden_state"])
    if case == "clip_vision":
        _check("image_embeds", out.image_embeds, io["image_embeds"])
    else:
        _check("pooled_output", out.pooled_output, io["pooled_output"])


def test_clip_model_parity():
    module, params = load_clip(os.path.join(FIXTURES, "clip"))
    assert isinstance(module, CLIPModel) and module.projection_dim == 16
    io = np.load(os.path.join(FIXTURES, "clip", "io.npz"))
    v = {"params": params}
    _check("image", module.apply(v, io["pixel_values"], method="image_embeds"), io["image_embeds"])
    _check("text", module.apply(v, io["input_ids"], method="text_embeds"), io["text_embeds"])


def test_vision_prefix_and_bad_inputs(tmp_path):
    # transformers < 5 wrote a bare CLIPVisionModel with the vision_model. prefix.
    from safetensors.numpy import load_file, save_file

    src = os.path.join(FIXTURES, "clip_vision_bare")
    shutil.copy(os.path.join(src, "config.json"), tmp_path)
    state = load_file(os.path.join(src, "model.safetensors"))
    save_file(
        {f"vision_model.{k}": v for k, v in state.items()}, str(tmp_path / "model.safetensors")
    )
    module, params = load_clip(tmp_path)
    io = np.load(os.path.join(src, "io.npz"))
    _check("prefixed", module.apply({"params": params}, io["pixel_values"]).pooled_output,
           io["pooled_output"])  # fmt: skip
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 30, 30, 3\] \(NHWC"):
        module.apply({"params": params}, io["pixel_values"].transpose(0, 3, 1, 2))
    del state["post_layernorm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing parameters \['post_layernorm.weight'\]"):
        load_clip(tmp_path)


def test_refused_configs(tmp_path):
    with open(os.path.join(FIXTURES, "clip_vision", "config.json")) as f:
        config = json.load(f)
    for change, match in (
        ({"architectures": ["CLIPTextModel"]}, "not one of .*load_text_encoder"),
        ({"hidden_act": "mish"}, "hidden_act 'mish' is not one of"),
        ({"image_size": 32}, "image_size is not divisible by patch_size"),
        ({"image_size": [30, 36]}, "image_size must be one integer"),
    ):
        with open(tmp_path / "config.json", "w") as f:
            json.dump({**config, **change}, f)
        shutil.copy(os.path.join(FIXTURES, "clip_vision", "model.safetensors"), tmp_path)
        with pytest.raises(ValueError, match=match):
            load_clip(tmp_path)
