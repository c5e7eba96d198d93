"""Export to / import from diffusers' layout: exact round trips and clear errors."""

import json
import os
import pickle
import shutil
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.models import (
    ADM_IMAGENET64,
    DDPM_CIFAR10,
    DIGITS,
    TINY,
    UNet,
    export_diffusers_unet,
    load_diffusers_unet,
    load_flax_diffusers_unet,
)
from jaxdiff.models.convert import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "unet")
sys.path.insert(0, FIXTURES)
from random_weights import random_params  # noqa: E402

SMALL = dict(channels=(8, 16), norm_groups=4, num_res_blocks=1)
ROUND_TRIP = {
    "tiny": (TINY(), 3),
    "digits": (DIGITS(), 1),
    "adm-like": (ADM_IMAGENET64(**SMALL, attention_levels=(1,), head_dim=4, num_classes=3), 3),
    "ddpm-like": (DDPM_CIFAR10(**SMALL), 3),
    "transformer": (UNet(**SMALL, attention_type="transformer", context_dim=6, num_heads=(1, 2),
                         transformer_depth=(1, 2), linear_projection=True, num_classes=4,
                         scale_shift_norm=True), 4),
}  # fmt: skip


def _params(module, in_channels, seed=0):
    x = jnp.zeros((1, 8, 8, in_channels))
    labels = jnp.zeros(1, jnp.int32) if module.num_classes else None
    ctx = None if module.context_dim is None else jnp.zeros((1, 2, module.context_dim))
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), x, jnp.zeros(1), labels=labels, context=ctx)
    )
    return random_params(shapes["params"], seed)


FIELDS = ("channels", "attention_levels", "num_classes", "dropout", "scale_shift_norm", "resample",
          "attention_type", "context_dim", "flip_sin_to_cos", "freq_shift", "norm_eps",
          "norm_groups", "downsample_padding", "linear_projection", "mid_attention")  # fmt: skip


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_export_import_round_trip_is_exact(tmp_path, name):
    module, in_channels = ROUND_TRIP[name]
    params = _params(module, in_channels)
    export_diffusers_unet(module, params, tmp_path)
    loaded, back = load_diffusers_unet(tmp_path)
    flat_a = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_b = jax.tree_util.tree_flatten_with_path(back)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))

    def norm(value):
        return tuple(value) if isinstance(value, list | tuple) else value

    for field in FIELDS:
        assert norm(getattr(loaded, field)) == norm(getattr(module, field)), field
    assert loaded.out_channels == (module.out_channels or in_channels)
    levels = sorted({*module.attention_levels, len(module.channels) - 1})
    assert [loaded.level_heads(i) for i in levels] == [module.level_heads(i) for i in levels]


@pytest.mark.parametrize("name", ["unet2d_tiny", "unet2d_adm", "unet2d_cond"])
def test_export_reproduces_the_diffusers_files(tmp_path, name):
    """Loading a diffusers checkpoint and exporting it again gives diffusers' own tensors."""
    src = os.path.join(FIXTURES, name)
    module, params = load_diffusers_unet(src)
    export_diffusers_unet(module, params, tmp_path)
    ref, out = (
        load_file(os.path.join(src, SAFETENSORS_NAME)),
        load_file(tmp_path / SAFETENSORS_NAME),
    )
    assert sorted(ref) == sorted(out)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key], err_msg=key)
    with open(os.path.join(src, CONFIG_NAME)) as f:
        ref_cfg = json.load(f)
    with open(tmp_path / CONFIG_NAME) as f:
        out_cfg = json.load(f)
    for key in ("_class_name", "down_block_types", "up_block_types", "block_out_channels",
                "num_class_embeds", "resnet_time_scale_shift"):  # fmt: skip
        assert out_cfg[key] == ref_cfg[key], key


def _copy_fixture(tmp_path, name="unet2d_tiny"):
    src = os.path.join(FIXTURES, name)
    for file in (CONFIG_NAME, SAFETENSORS_NAME):
        shutil.copy(os.path.join(src, file), tmp_path / file)
    return tmp_path


def _edit_config(path, **changes):
    with open(path / CONFIG_NAME) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path / CONFIG_NAME, "w") as f:
        json.dump(cfg, f)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet(tmp_path)
    shutil.copy(os.path.join(FIXTURES, "unet2d_tiny", CONFIG_NAME), tmp_path / CONFIG_NAME)
    with pytest.raises(FileNotFoundError, match=SAFETENSORS_NAME):
        load_diffusers_unet(tmp_path)
    with pytest.raises(FileNotFoundError, match="diffusion_flax_model.msgpack"):
        load_flax_diffusers_unet(tmp_path)


def test_wrong_shapes_and_keys_are_named(tmp_path):
    path = _copy_fixture(tmp_path)
    state = load_file(path / SAFETENSORS_NAME)
    state["conv_in.weight"] = state["conv_in.weight"][:, :, :2]
    del state["conv_out.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    save_file(state, str(path / SAFETENSORS_NAME))
    with pytest.raises(ValueError) as err:
        load_diffusers_unet(path)
    msg = str(err.value)
    assert "conv_in.weight has shape (16, 3, 2, 3), the model needs (16, 3, 3, 3)" in msg
    assert "missing parameters ['conv_out.bias']" in msg and "extra.weight" in msg


@pytest.mark.parametrize(
    "changes, match",
    [(dict(down_block_types=["DownBlock2D", "SkipDownBlock2D"]), "SkipDownBlock2D"),
     (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
     (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
     (dict(brand_new_option=1), "'brand_new_option' is not a UNet2DModel field"),
     (dict(up_block_types=["UpBlock2D", "UpBlock2D"]), "same attention on the way down and up"),
     (dict(_class_name="UNet3DConditionModel"), "UNet3DConditionModel")],
)  # fmt: skip
def test_unsupported_configs_are_named(tmp_path, changes, match):
    path = _copy_fixture(tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        load_diffusers_unet(path)


def test_legacy_attention_names_are_accepted(tmp_path):
    path = _copy_fixture(tmp_path)
    state = load_file(path / SAFETENSORS_NAME)
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    legacy = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        legacy[key] = value
    assert any(".proj_attn." in k for k in legacy)
    save_file(legacy, str(path / SAFETENSORS_NAME))
    _, params = load_diffusers_unet(path)
    _, ref = load_diffusers_unet(os.path.join(FIXTURES, "unet2d_tiny"))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_bin_with_code_is_refused(tmp_path):
    shutil.copy(os.path.join(FIXTURES, "unet2d_tiny", CONFIG_NAME), tmp_path / CONFIG_NAME)
    with zipfile.ZipFile(tmp_path / BIN_NAME, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"conv_in.weight": _Exploit()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|os).system"):
        load_diffusers_unet(tmp_path)


@pytest.mark.parametrize(
    "module, match",
    [(UNet(**SMALL, attention_type="transformer"), "context_dim=None"),
     (UNet(**SMALL, attention_type="transformer", context_dim=4, gelu_approximate=True),
      "gelu_approximate"),
     (UNet(**{**SMALL, "num_res_blocks": (1, 2)}), "same num_res_blocks"),
     (UNet(**SMALL, num_heads=(1, 4), attention_levels=(0, 1)), "one head size")],
)  # fmt: skip
def test_export_refuses_what_diffusers_cannot_express(tmp_path, module, match):
    params = _params(module, 3)
    with pytest.raises(ValueError, match=match):
        export_diffusers_unet(module, params, tmp_path)
