"""diffusers checkpoints loaded by jaxdiff give diffusers' outputs (fixtures: generate.py).

Tolerance: max |jaxdiff - diffusers| <= 1e-4 * std(output), jaxdiff in float32 against the
diffusers model (PyTorch, or Flax for the msgpack checkpoint) evaluated in float64 on the same
float32 weights.
"""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdiff.models import load_diffusers_unet, load_flax_diffusers_unet
from jaxdiff.models.convert import (
    BIN_NAME,
    CONFIG_NAME,
    SAFETENSORS_NAME,
    _to_torch,
    param_shapes,
    torch_key,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "unet")
sys.path.insert(0, FIXTURES)
from random_weights import random_state_dict  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # these tests check numbers, not speed


def _io(name):
    return dict(np.load(os.path.join(FIXTURES, name, "io.npz")))


def _apply(module, params, io):
    fn = jax.jit(module.apply, compiler_options=FAST_COMPILE)
    return np.asarray(
        fn({"params": params}, jnp.asarray(io["x"]), jnp.asarray(io["t"]),
           labels=None if "labels" not in io else jnp.asarray(io["labels"], jnp.int32),
           context=None if "context" not in io else jnp.asarray(io["context"]))
    )  # fmt: skip


def _assert_parity(out, ref):
    err = np.abs(out - ref).max() / ref.std()
    assert out.shape == ref.shape
    assert err <= 1e-4, f"max |jaxdiff - diffusers| = {err:.2e} x std(output)"


@pytest.mark.parametrize("name", ["unet2d_tiny", "unet2d_adm", "unet2d_cond"])
def test_torch_checkpoint_parity(name):
    module, params = load_diffusers_unet(os.path.join(FIXTURES, name))
    _assert_parity(_apply(module, params, _io(name)), _io(name)["out"])


def test_xla_attention_parity():
    module, params = load_diffusers_unet(
        os.path.join(FIXTURES, "unet2d_cond"), attention_impl="xla"
    )
    _assert_parity(_apply(module, params, _io("unet2d_cond")), _io("unet2d_cond")["out"])


def test_bin_checkpoint_is_read_without_pickle_execution(tmp_path):
    src = os.path.join(FIXTURES, "unet2d_tiny")
    for name in (CONFIG_NAME, BIN_NAME):
        shutil.copy(os.path.join(src, name), tmp_path / name)
    _, from_bin = load_diffusers_unet(tmp_path)
    _, from_st = load_diffusers_unet(src)
    for a, b in zip(jax.tree.leaves(from_bin), jax.tree.leaves(from_st), strict=True):
        np.testing.assert_array_equal(a, b)


def test_flax_msgpack_checkpoint_parity():
    module, params = load_flax_diffusers_unet(os.path.join(FIXTURES, "flax_cond"))
    assert module.gelu_approximate and module.transformer_norm_eps == 1e-5
    _assert_parity(_apply(module, params, _io("flax_cond")), _io("flax_cond")["out"])


@pytest.mark.slow
def test_ddpm_cifar10_parity(tmp_path):
    """The 35.7M-parameter DDPM CIFAR-10 config with numpy-generated weights.

    The weights (143 MB) are not committed: both sides draw them from the same seeded numpy
    generator; the fixture's key list and per-tensor sums prove the draws are identical.
    """
    src = os.path.join(FIXTURES, "ddpm_cifar10")
    io = _io("ddpm_cifar10")
    shutil.copy(os.path.join(src, CONFIG_NAME), tmp_path / CONFIG_NAME)
    from jaxdiff.models.convert import _read_config
    from jaxdiff.models.diffusers_config import unet_kwargs
    from jaxdiff.models.unet import UNet

    kwargs, in_channels = unet_kwargs(_read_config(src))
    shapes = {torch_key(p): _to_torch(np.zeros(s, np.int8), p[-1]).shape
              for p, s in param_shapes(UNet(**kwargs), in_channels).items()}  # fmt: skip
    assert sorted(shapes) == list(io["keys"])
    assert [list(shapes[k]) for k in io["keys"]] == json.loads(str(io["shapes"]))
    state = random_state_dict(shapes, seed=10)
    sums = np.array([state[k].astype(np.float64).sum() for k in io["keys"]])
    np.testing.assert_array_equal(sums, io["sums"])  # the same numbers as in diffusers
    save_file(state, str(tmp_path / SAFETENSORS_NAME))
    module, params = load_diffusers_unet(tmp_path)
    _assert_parity(_apply(module, params, io), io["out"])
